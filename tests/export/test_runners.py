"""Device runners: onnxruntime CPU in process and a command-driven device played by a script."""
import os
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export import runners

FAKE_DEVICE = os.path.join(os.path.dirname(__file__), "fake_device.py")


def _matmul_model(n=64):
    w = helper.make_tensor("w", TensorProto.FLOAT, (n, n), np.eye(n, dtype=np.float32).ravel())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", n])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_get_runner_by_name():
    runner = runners.get_runner("ort-cpu-2t")
    assert isinstance(runner, runners.OrtCpuRunner) and runner.threads == 2
    assert runner.name == "ort-cpu-2t"
    assert runners.get_runner("ort-cpu-1t", runs=7).runs == 7
    with pytest.raises(KeyError, match="unknown device"):
        runners.get_runner("toaster")


def test_ort_cpu_runner_statistics():
    runner = runners.get_runner("ort-cpu-1t", runs=20, warmup=2)
    m = runner.measure(_matmul_model(), batch=4)
    assert m.runs == 20 and len(m.samples_ms) == 20
    assert 0 < min(m.samples_ms) <= m.median_ms <= m.p90_ms <= max(m.samples_ms)
    assert m.median_ms == pytest.approx(np.median(m.samples_ms))
    assert m.peak_memory_bytes is None or m.peak_memory_bytes >= 0


def test_random_inputs_follow_signature():
    feeds = runners.random_inputs(_matmul_model(8), batch=3)
    assert feeds["x"].shape == (3, 8) and feeds["x"].dtype == np.float32


def test_command_runner_with_fake_device(tmp_path):
    device_dir = tmp_path / "device"
    py = sys.executable
    runner = runners.CommandRunner(
        "fake-phone",
        push=f"{py} {FAKE_DEVICE} push {{model}} {device_dir}",
        run=f"{py} {FAKE_DEVICE} run {{name}} {device_dir} {{runs}}", runs=9)
    path = tmp_path / "mm.onnx"
    onnx.save(_matmul_model(), str(path))
    m = runner.measure(str(path))
    assert (device_dir / "mm.onnx").exists()
    assert m.device == "fake-phone" and m.runs == 9
    assert m.median_ms > 0 and m.p90_ms >= m.median_ms
    runners.register_runner("fake-phone", lambda: runner)
    assert runners.get_runner("fake-phone") is runner


def test_command_runner_reports_device_failures(tmp_path):
    py = sys.executable
    no_push = runners.CommandRunner(
        "no-push", run=f"{py} {FAKE_DEVICE} run {{name}} {tmp_path / 'empty'} {{runs}}")
    path = tmp_path / "mm.onnx"
    onnx.save(_matmul_model(), str(path))
    with pytest.raises(RuntimeError, match="no such file on device"):
        no_push.measure(str(path))
    silent = runners.CommandRunner("silent", run="echo ready")
    with pytest.raises(RuntimeError, match="no latency"):
        silent.measure(str(path))


def test_command_runner_parses_units():
    runner = runners.CommandRunner("us-device", run="printf 'latency_us=1500\\nlatency_us=2500\\n'",
                                   pattern=r"latency_us=(\d+)", scale=1e-3)
    m = runner.measure(_matmul_model())
    assert m.samples_ms == [1.5, 2.5]
    assert m.median_ms == pytest.approx(2.0)


def test_measure_interleaved_rounds_visit_every_model_and_pool_samples():
    class Recording(runners.Runner):
        name = "recording"

        def __init__(self):
            self.calls = []

        def measure(self, model, batch=1, inputs=None, runs=None, warmup=None):
            self.calls.append((model, batch))
            return runners.summarize(self.name, [float(len(self.calls))] * runs)

    runner = Recording()
    out = runners.measure_interleaved(runner, ["a", "b"], batches=(1, 32), runs=2, rounds=3)
    # Every round times every model at every batch before the next round starts.
    assert runner.calls == [("a", 1), ("a", 32), ("b", 1), ("b", 32)] * 3
    assert [sorted(m) for m in out] == [[1, 32], [1, 32]]
    assert out[0][1].runs == 6 and out[0][1].median_ms == 5.0      # calls 1, 5, 9 pooled
    assert out[1][32].median_ms == 8.0                                # calls 4, 8, 12


@pytest.mark.parametrize("flags, floats", [("fpu sse sse2 avx avx2 fma", 8),
                                           ("fpu sse avx2 avx512f avx512bw avx512_vnni", 16),
                                           ("fp asimd evtstrm aes", 4)])
def test_simd_floats_reads_the_vector_width_from_cpu_flags(tmp_path, flags, floats):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\n")
    assert runners.simd_floats(str(cpuinfo)) == floats
    assert runners.simd_floats(str(tmp_path / "missing")) == 4


def test_runners_name_the_channel_step_their_kernels_reward():
    assert runners.get_runner("ort-cpu-1t").channel_multiple == runners.simd_floats()
    phone = runners.CommandRunner("npu", run="true", channel_multiple=32)
    assert phone.channel_multiple == 32
