"""A factorized model is a plain JAX function: it jits, differentiates with respect to the
factors, runs at another batch size, and exports to ONNX with onnxruntime parity."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import export
import lowrank
from core import trace
from models import zoo


def _half_ranks(fn, variables, x):
    sites, _ = lowrank.find_sites(trace.trace(fn, variables, x))
    return {s.path: max(1, s.geometry.full_rank // 2) * s.geometry.groups for s in sites}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet20", "vit", "mixer"])
def test_factorized_model_jits_differentiates_and_exports(name, tmp_path):
    fn, variables, x = zoo.instantiate(name)
    out = lowrank.factorize(fn, variables, x, ranks=_half_ranks(fn, variables, x),
                            method="data", data=[x])
    assert out.layers and all(layer.rank < layer.full_rank for layer in out.layers)
    y = jax.jit(out.fn)(out.variables, x)
    assert y.shape == fn(variables, x).shape and bool(jnp.all(jnp.isfinite(y)))
    # Another batch size: the original is re-traced at the new shape.
    x5 = jnp.concatenate([x, x, x[:1]])
    np.testing.assert_allclose(out.fn(out.variables, x5)[:2], y, rtol=1e-4, atol=1e-5)
    # Gradients reach both factors of every layer.
    grads = jax.grad(lambda v: jnp.sum(out.fn(v, x) ** 2))(out.variables)
    for layer in out.layers:
        node = grads
        for key in layer.path.split("/"):
            node = node[key]
        assert isinstance(node, lowrank.LowRankKernel)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in node)
        assert float(jnp.abs(node.w0).sum()) > 0 and float(jnp.abs(node.w1).sum()) > 0
    # ONNX with a symbolic batch; to_onnx raises ExportParityError on a mismatch.
    result = export.to_onnx(out.fn, out.variables, x, path=str(tmp_path / f"{name}.onnx"))
    assert result.parity.ok
    convs_or_gemms = sum(result.op_counts.get(op, 0) for op in ("Conv", "MatMul", "Gemm",
                                                                "Einsum"))
    assert convs_or_gemms >= len(out.layers) * 2 - 2
