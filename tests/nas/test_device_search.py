"""The device-specific search (nas.device_search): choices at equal predicted accuracy, each
device's choice timed on every device in that device's own format, and the verdict; and the
int8 comparison's quantized architecture (nas.int8_friendliness.int8_model)."""
import numpy as np
import pytest

from export.runners import Runner, summarize
from nas import architecture, device_search, int8_friendliness
from tests.nas.helpers import tiny_dataset, tiny_library

ACCURACY = {(0, 0): 0.90, (0, 1): 0.88, (1, 0): 0.85, (1, 1): 0.80}
LATENCY_A = {(0, 0): 3.0, (0, 1): 2.0, (1, 0): 1.5, (1, 1): 1.0}
LATENCY_B = {(0, 0): 3.0, (0, 1): 1.0, (1, 0): 2.5, (1, 1): 0.5}


def predictor(table):
    return lambda archs: np.array([table[tuple(a)] for a in archs])


def test_the_common_target_is_the_best_accuracy_every_front_reaches():
    fronts = {"a": [(0, 0), (1, 1)], "b": [(0, 1), (1, 1)]}
    assert device_search.accuracy_target(fronts, predictor(ACCURACY)) == pytest.approx(0.88)
    assert device_search.accuracy_target(fronts, predictor(ACCURACY), 0.05) \
        == pytest.approx(0.83)


def test_each_device_takes_its_fastest_architecture_at_the_target():
    front = list(ACCURACY)
    choose = lambda lat, target: device_search.equal_accuracy_choice(  # noqa: E731
        front, predictor(ACCURACY), predictor(lat), target)
    assert choose(LATENCY_A, 0.84) == (1, 0)      # 0.85 at 1.5 ms beats 0.88 at 2.0 ms
    assert choose(LATENCY_B, 0.84) == (0, 1)      # on B the same level costs 1.0 ms
    assert choose(LATENCY_A, 0.95) == (0, 0)      # none reaches it: the most accurate


def test_the_verdict_reads_each_device_in_its_own_column():
    choices = {"a": {"arch": [1, 0], "latency_ms": {"a": 1.5, "b": 2.5}, "test_accuracy": 0.85},
               "b": {"arch": [0, 1], "latency_ms": {"a": 2.0, "b": 1.0}, "test_accuracy": 0.88}}
    verdict = device_search.verdict(choices, ["a", "b"])
    assert verdict["a"]["own_is_fastest"] and verdict["b"]["own_is_fastest"]
    assert verdict["a"]["speedup_vs_other"]["b"] == pytest.approx(2.0 / 1.5)
    assert verdict["b"]["speedup_vs_other"]["a"] == pytest.approx(2.5)
    assert verdict["a"]["accuracy_gap_pt"]["b"] == pytest.approx(-3.0)
    choices["b"]["latency_ms"]["a"] = 1.4
    assert not device_search.verdict(choices, ["a", "b"])["a"]["own_is_fastest"]
    choices["b"]["arch"] = [1, 0]         # one architecture for both: no claim either way
    assert device_search.verdict(choices, ["a", "b"])["a"]["own_is_fastest"] is None
    table = device_search.markdown({"devices": ["a", "b"], "choices": {
        d: {**c, "choices": ["teacher"]} for d, c in choices.items()},
        "teacher": {"test_accuracy": 0.9, "latency_ms": {"a": 3.0, "b": 3.0}}})
    assert "| a | 0.8500 | **1.500** | 2.500 |" in table


class CountingDevice(Runner):
    """A runner whose latency is the number of operators of the model it is handed, read
    in its own format: ONNX nodes, or the .tflite flatbuffer's operators (LiteRT's
    format, read by the schema reader, not by our exporter)."""

    def __init__(self, name, model_format):
        self.name, self.model_format, self.seen = name, model_format, []

    def measure(self, model, batch=1, inputs=None, runs=None, warmup=None):
        if self.model_format == "onnx":
            ops = len(model.graph.node)
        else:
            from export.tflite_export import count_ops
            assert isinstance(model, (bytes, bytearray)) and model[4:8] == b"TFL3"
            ops = sum(count_ops(bytes(model)).values())
        self.seen.append(ops)
        return summarize(self.name, [float(ops)] * (runs or 3))


@pytest.mark.slow
def test_each_device_times_the_choices_in_its_own_format():
    pytest.importorskip("tensorflow")
    library, _ = tiny_library()
    archs = [(0, 0, 0), (1, 1, 1)]
    runners = {"onnx-dev": CountingDevice("onnx-dev", "onnx"),
               "tflite-dev": CountingDevice("tflite-dev", "tflite")}
    timed = device_search.cross_latencies(library, archs, runners, (12, 12, 1), rounds=1,
                                          runs=2)
    for device, runner in runners.items():
        expected = [architecture.export_model(library, a, (12, 12, 1),
                                              runner=runner)[1][f"{runner.model_format}_ops"]
                    for a in archs]
        assert [row["latency_ms"] for row in timed[device]] == pytest.approx(expected)
        assert expected[1] > expected[0]          # the students add operators in both formats
    # the two formats are different graphs of the same networks (LiteRT fuses activations)
    assert timed["onnx-dev"][0]["latency_ms"] != timed["tflite-dev"][0]["latency_ms"]


def test_the_int8_model_of_an_architecture_follows_its_float_model():
    library, _ = tiny_library()
    dataset = tiny_dataset()
    arch = (1, 0, 1)
    qfn, qvars = int8_friendliness.int8_model(library, arch, dataset, "npu_int8_per_tensor",
                                              calibration_images=64, batch_size=32)
    fn, variables = architecture.assemble(library, arch)
    from data import pipeline
    x = pipeline.normalize(dataset.test[0][:32], dataset.mean, dataset.std)
    exact, quantized = np.asarray(fn(variables, x)), np.asarray(qfn(qvars, x))
    error = np.abs(quantized - exact).max() / np.abs(exact).max()
    assert 0 < error < 0.1            # quantized (not the float model), and close to it
