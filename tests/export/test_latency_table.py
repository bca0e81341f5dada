"""Latency tables: ops measured once per device and signature, cached on disk."""
import json

import numpy as np
import pytest

from export import latency_table as lt
from export import runners
from export.parity import session


class CountingRunner(runners.Runner):
    """A deterministic device: latency = MACs-ish of the one-op model; counts measurements."""

    def __init__(self, name):
        self.name, self.calls = name, 0

    def measure(self, model, batch=1, inputs=None, runs=None, warmup=None):
        self.calls += 1
        size = sum(int(np.prod(i.dims)) for i in model.graph.initializer) + 1
        return runners.summarize(self.name, [size * 1e-3] * (runs or 3))


SIGS = [lt.conv_signature(1, 8, 8, c, 2 * c) for c in (4, 8, 16)]


def test_cache_miss_then_hit_across_instances(tmp_path):
    path = str(tmp_path / "table.json")
    device = CountingRunner("dev-a")
    table = lt.LatencyTable(device, path, repeats=2, progress=False)
    assert table.build(SIGS) == 3                 # miss: all measured
    assert device.calls == 6                      # repeats x signatures
    assert table.build(SIGS) == 0                 # hit in memory
    reloaded = lt.LatencyTable(device, path, repeats=2, progress=False)
    assert all(s in reloaded for s in SIGS)       # hit from disk
    assert reloaded.lookup(SIGS[1]) == table.lookup(SIGS[1])
    assert device.calls == 6
    assert reloaded.build(SIGS + [lt.conv_signature(1, 8, 8, 32, 8)]) == 1


def test_cache_invalidated_by_device_change(tmp_path):
    path = str(tmp_path / "table.json")
    lt.LatencyTable(CountingRunner("dev-a"), path, progress=False).build(SIGS)
    other = CountingRunner("dev-b")
    table_b = lt.LatencyTable(other, path, progress=False)
    assert len(table_b) == 0 and not any(s in table_b for s in SIGS)
    table_b.build(SIGS[:1])
    assert other.calls > 0
    stored = json.load(open(path))["devices"]
    assert set(stored) == {"dev-a", "dev-b"}     # both devices kept, never mixed
    assert len(stored["dev-a"]) == 3 and len(stored["dev-b"]) == 1


def test_signature_keys_are_stable_and_distinct():
    a = lt.conv_signature(1, 14, 14, 16, 32)
    assert a.key == lt.conv_signature(1, 14, 14, 16, 32).key
    assert a.key != lt.conv_signature(1, 14, 14, 16, 32, strides=(2, 2)).key
    assert a.replace(cin=8).get("cin") == 8 and a.get("cin") == 16
    assert a.get("pads") == (1, 1, 1, 1)


@pytest.mark.parametrize("sig", [
    lt.conv_signature(1, 9, 9, 6, 10, strides=(2, 2)),
    lt.conv_signature(1, 8, 8, 12, 12, groups=12),
    lt.OpSignature.make("dense", m=3, k=7, n=5),
    lt.OpSignature.make("matmul", batch=2, m=4, k=6, n=3),
    lt.OpSignature.make("attention", batch=2, tokens=5, head_dim=8),
    lt.OpSignature.make("pool", mode="max", n=1, c=4, h=8, w=8, kernel=(2, 2),
                        strides=(2, 2), pads=(0, 0, 0, 0)),
    lt.OpSignature.make("elementwise", rows=12, ch=7, arity=2)])
def test_every_op_kind_builds_a_runnable_model(sig):
    model = lt.ONNX_BUILDERS[sig.kind](sig)
    sess = session(model)
    outs = sess.run(None, runners.random_inputs(model))
    assert np.all(np.isfinite(outs[0]))
    if sig.kind == "conv":
        assert outs[0].shape[1] == sig.get("cout")


def test_real_runner_times_ops(tmp_path):
    table = lt.LatencyTable(runners.get_runner("ort-cpu-1t"), str(tmp_path / "t.json"),
                            runs=5, warmup=1, repeats=1, progress=False)
    small, big = lt.conv_signature(1, 8, 8, 8, 8), lt.conv_signature(1, 32, 32, 64, 64)
    table.build([small, big])
    assert 0 < table.lookup(small) and 0 < table.lookup(big)
    assert table.entries[big.key]["p10_ms"] <= table.entries[big.key]["median_ms"] * 1.5
