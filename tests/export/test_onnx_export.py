"""Every zoo model exports to ONNX and onnxruntime reproduces it; broken exports are caught."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import jax
import jax.numpy as jnp

import export
from export import graph_passes
from models import zoo

QUICK = ("resnet20",)


def _export_zoo_model(name, tmp_path):
    fn, variables, x = zoo.instantiate(name, tiny=True, batch=2)
    result = export.to_onnx(fn, variables, x, path=str(tmp_path / f"{name}.onnx"))
    assert result.parity.ok
    assert result.parity.max_relative_error < 1e-4
    assert result.parity.batches == [2, 3]          # checked again at another batch size
    dims = result.model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "B"
    return result


@pytest.mark.parametrize("name", QUICK)
def test_quick_zoo_models_export_with_parity(name, tmp_path):
    _export_zoo_model(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(zoo.ZOO) - set(QUICK)))
def test_every_zoo_model_exports_with_parity(name, tmp_path):
    _export_zoo_model(name, tmp_path)


def test_conv_net_has_no_transpose_pairs(tmp_path):
    fn, variables, x = zoo.instantiate("resnet20", tiny=True, batch=2)
    x3 = jnp.concatenate([x, x, x], axis=-1)          # 3 input channels: NHWC->NCHW needed
    from models import resnet
    module = resnet.ResNet(10, (1, 1, 1), (4, 8, 8), "basic", 4)
    variables = module.init(jax.random.key(0), x3)
    result = export.to_onnx(lambda v, x: module.apply(v, x), variables, x3)
    counts = result.op_counts
    assert counts["Conv"] >= 9
    assert counts.get("Transpose", 0) <= 2
    # BatchNorm folded into the convs: no Sub/Div/Sqrt left.
    assert not {"Sub", "Div", "Sqrt"} & set(counts)


def test_tampered_initializer_fails_parity(tmp_path):
    fn, variables, x = zoo.instantiate("resnet20", tiny=True, batch=2)
    path = tmp_path / "model.onnx"
    export.to_onnx(fn, variables, x, path=str(path))
    model = onnx.load(str(path))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    target = convs[len(convs) // 2].input[1]
    for i, init in enumerate(model.graph.initializer):
        if init.name == target:
            value = numpy_helper.to_array(init).copy()
            value.flat[0] += 10.0
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, target))
    onnx.save(model, str(path))
    with pytest.raises(export.ExportParityError, match="does not reproduce"):
        export.check_parity(str(path), fn, variables, [x])


def test_multiple_outputs_and_integer_inputs():
    def fn(variables, tokens, mask):
        emb = variables["table"][tokens]                    # gather with int ids
        pooled = jnp.sum(emb * mask[..., None], axis=1)
        return {"logits": pooled @ variables["w"], "count": jnp.sum(tokens > 3, axis=1)}

    key = jax.random.key(1)
    variables = {"table": jax.random.normal(key, (11, 6)), "w": jnp.ones((6, 3))}
    tokens = jnp.array([[1, 5, 7, 2], [10, 0, 3, 4]], jnp.int32)
    mask = jnp.ones((2, 4), jnp.float32)
    result = export.to_onnx(fn, variables, tokens, mask)
    assert len(result.output_names) == 2
    leaves = [o.name for o in result.parity.outputs]
    assert leaves == result.output_names
    assert result.parity.ok


def test_transpose_sinking_preserves_values():
    """Graph passes alone (no JAX): a NHWC conv + BN-like affine + relu + residual chain."""
    fn = lambda v, x: jax.nn.relu(x + jax.lax.conv_general_dilated(
        x, v["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) * v["s"] - 0.5)
    variables = {"w": jax.random.normal(jax.random.key(0), (3, 3, 5, 5)),
                 "s": jnp.linspace(0.5, 2.0, 5)}
    x = jax.random.normal(jax.random.key(2), (2, 6, 6, 5))
    raw = export.to_onnx(fn, variables, x, optimize=False)
    clean = export.to_onnx(fn, variables, x)
    assert raw.op_counts["Transpose"] > clean.op_counts.get("Transpose", 0)
    assert clean.op_counts.get("Transpose", 0) <= 2
    assert graph_passes.count_ops(clean.model).get("Mul", 0) == 0   # scale folded into Conv


def test_export_leaves_jax_numpy_as_it_was():
    """jax2onnx's plugins replace jnp.cumsum on import with one that refuses a positional
    axis; after an export the user's ``jnp.cumsum(x, -1)`` must still work (and equal
    numpy's), and an exported cumsum must still match onnxruntime."""
    import jax.numpy as jnp
    import numpy as np

    from export import to_onnx
    original = jnp.cumsum
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    result = to_onnx(lambda p, x: jnp.cumsum(x, axis=1) * p, jnp.ones(()), x)
    assert result.parity.ok and result.op_counts.get("CumSum") == 1
    assert jnp.cumsum is original and not hasattr(jnp, "cumsum_p")
    np.testing.assert_array_equal(jnp.cumsum(x, -1), np.cumsum(x, -1))
