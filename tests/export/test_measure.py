"""export.measure: export, exact cost and latency of several models, timed interleaved."""
import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime as ort

from core import cost
from export.measure import export_and_compare


def _mlp(width):
    keys = jax.random.split(jax.random.key(0), 2)
    variables = {"w1": jax.random.normal(keys[0], (6, width)) * 0.5,
                 "w2": jax.random.normal(keys[1], (width, 3)) * 0.5}

    def fn(v, x):
        return jnp.tanh(x @ v["w1"]) @ v["w2"]
    return fn, variables


def test_export_and_compare_exports_counts_and_times_every_model(tmp_path):
    x = np.linspace(-1, 1, 4 * 6, dtype=np.float32).reshape(4, 6)
    models = {"wide": _mlp(32), "narrow": _mlp(8)}
    results = export_and_compare(models, x, str(tmp_path), batches=(1, 2), runs=3, rounds=2)
    assert list(results) == ["wide", "narrow"]
    for name, (fn, variables) in models.items():
        r = results[name]
        exact = cost.count(fn, variables, x[:1])
        assert (r["flops"], r["params"]) == (int(exact.flops), int(exact.params))
        assert r["parity_max_rel_error"] < 1e-5
        assert r["batch1_median_ms"] > 0 and r["batch2_p90_ms"] >= r["batch2_median_ms"]
        session = ort.InferenceSession(r["onnx"], providers=["CPUExecutionProvider"])
        out = session.run(None, {session.get_inputs()[0].name: x[:2]})[0]
        np.testing.assert_allclose(out, fn(variables, x[:2]), rtol=1e-5, atol=1e-6)
    assert results["narrow"]["params"] < results["wide"]["params"]
