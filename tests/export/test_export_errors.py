"""Models the export used to get wrong, and how it now handles each (issue 22):

- an unsupported primitive (``jnp.fft.fft``, a callback) fails before jax2onnx runs, naming
  the primitive and the model's source line;
- a reshape that hard-codes the batch fails under ``dynamic_batch=True`` naming its line;
- ``jnp.pad`` of a spatial axis exports with a symbolic batch (jax2onnx's pad cannot);
- inputs and outputs may be any pytrees, checked leaf by leaf;
- bfloat16 / float16 models export as float32 (onnxruntime has no bf16 Gemm), with a note.

Only two models are actually exported (about 10 s each on a quiet machine); the errors
are raised before jax2onnx, and the lowering rules are checked in JAX alone.
"""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import export
from export import lowering, preflight


def _line(marker: str) -> int:
    """Line number in this file of the line holding ``marker``."""
    with open(__file__) as f:
        return next(i for i, line in enumerate(f, 1) if marker in line and "_line(" not in line)


@pytest.fixture
def no_jax2onnx(monkeypatch):
    """Fails the test if jax2onnx is asked to convert anything."""
    import jax2onnx

    def refuse(*args, **kwargs):
        raise AssertionError("jax2onnx.to_onnx was called")
    monkeypatch.setattr(jax2onnx, "to_onnx", refuse)


def test_unsupported_primitives_fail_up_front_with_their_lines(no_jax2onnx):
    w = {"w": jnp.ones((8, 4))}
    x = jnp.ones((2, 8))

    def spectral(v, x):
        return jnp.abs(jnp.fft.fft(x @ v["w"]))                        # fft here

    with pytest.raises(preflight.UnsupportedPrimitiveError,
                       match=rf"fft: .*complex.*test_export_errors.py:{_line('# fft here')}"):
        export.to_onnx(spectral, w, x)

    def with_callback(v, x):
        y = x @ v["w"]
        return jax.pure_callback(lambda a: np.asarray(a) * 2,          # callback here
                                 jax.ShapeDtypeStruct(y.shape, y.dtype), y)

    with pytest.raises(preflight.UnsupportedPrimitiveError,
                       match=rf"pure_callback: jax2onnx has no lowering for it, at "
                             rf".*test_export_errors.py:{_line('# callback here')}"):
        export.to_onnx(with_callback, w, x)
    assert "conv_general_dilated" in preflight.jax2onnx_primitives()


def test_reshape_that_hard_codes_the_batch_is_named(no_jax2onnx):
    """``reshape(1, -1)`` at batch 1 makes the trace fail later, at the matmul (48*B against
    48 features); ``reshape(4, 48)`` at batch 4 traces but drops the batch. Both name the
    reshape's line and point to dynamic_batch=False, which then traces."""
    w = {"w": jnp.ones((48, 3))}
    flat_one = lambda v, x: x.reshape(1, -1) @ v["w"]                  # reshape one
    fixed_four = lambda v, x: jnp.tanh(x.reshape(4, 48)) @ v["w"]      # reshape four
    for fn, batch, marker in ((flat_one, 1, "# reshape one"), (fixed_four, 4, "# reshape four")):
        x = jnp.ones((batch, 4, 4, 3))
        with pytest.raises(preflight.HardCodedBatchError,
                           match=rf"hard-codes its batch size: at .*test_export_errors.py:"
                                 rf"{_line(marker)} .*dynamic_batch=False"):
            export.to_onnx(fn, w, x)
        traced = export.trace(fn, w, x, dynamic_batch=False)
        assert traced.closed.out_avals[0].shape == (batch, 3)
    with pytest.raises(preflight.SymbolicBatchError, match="dynamic_batch=False"):
        export.to_onnx(lambda v, x: x * (1.0 if x.shape[0] > 2 else 2.0), {}, jnp.ones((4, 3)))
    with pytest.raises(TypeError, match="dot_general"):      # a plain bug stays itself
        export.to_onnx(lambda v, x: x @ jnp.ones((5, 2)), {}, jnp.ones((4, 3)))


def test_batch_rule_accepts_batch_preserving_reshapes():
    (b,) = jax.export.symbolic_shape("B")
    legit = [((b, 4, 4, 3), (b, 48)), ((b, 4, 4, 3), (16 * b, 3)), ((16 * b, 3), (b, 16, 3)),
             ((b, 48), (1, b, 48)), ((4, b), (2, 2, b)), ((3, 4), (12,))]
    fixed = [((b, 4, 4, 3), (1, 48 * b)), ((b, 4, 4, 3), (2, 24 * b)),
             ((b, 48), (4, 48)), ((b, 48), (3, b, 16))]
    assert not any(preflight.hard_codes_batch(i, o) for i, o in legit)
    assert all(preflight.hard_codes_batch(i, o) for i, o in fixed)


@pytest.mark.parametrize("config", [((0, 0, 0), (1, 2, 0), (-1, 1, 0), (0, 0, 0)),
                                    ((0, 0, 0), (0, -2, 0), (3, 0, 0), (2, 1, 0))])
def test_pad_by_concatenation_matches_lax_pad(config):
    x = jax.random.normal(jax.random.key(0), (2, 5, 4, 3))
    np.testing.assert_array_equal(lowering.pad_by_concatenation(x, 0.5, config),
                                  lax.pad(x, jnp.float32(0.5), config))


def _image_and_tokens_model(v, inputs):
    """A single tuple input (image, token ids), a dict output, a spatial jnp.pad."""
    image, tokens = inputs
    padded = jnp.pad(image, ((0, 0), (1, 1), (2, 0), (0, 0)), constant_values=0.25)
    y = lax.conv_general_dilated(padded, v["conv"], (1, 1), "VALID",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    pooled = jnp.mean(jax.nn.relu(y), axis=(1, 2))
    text = jnp.mean(v["table"][tokens], axis=1)
    return {"logits": (pooled + text) @ v["head"], "long": jnp.sum(tokens > 3, axis=1)}


def test_pytree_inputs_and_outputs_with_a_padded_image():
    keys = jax.random.split(jax.random.key(3), 4)
    v = {"conv": jax.random.normal(keys[0], (3, 3, 3, 6)),
         "table": jax.random.normal(keys[1], (11, 6)), "head": jax.random.normal(keys[2], (6, 4))}
    image = jax.random.normal(keys[3], (2, 6, 6, 3))
    tokens = jnp.array([[1, 5, 7], [10, 0, 3]], jnp.int32)
    result = export.to_onnx(_image_and_tokens_model, v, (image, tokens))
    assert result.parity.ok and result.parity.batches == [2, 3]
    assert [o.path for o in result.parity.outputs] == ["['logits']", "['long']"]
    assert result.parity.max_relative_error < 1e-5
    graph_inputs = result.model.graph.input
    assert [i.type.tensor_type.shape.dim[0].dim_param for i in graph_inputs] == ["B", "B"]
    assert result.op_counts.get("Pad", 0) == 0             # the pad became a concatenation
    # Leaf by leaf: a function that is off in one leaf only is caught, named by its path.
    def off(v, inputs):
        out = _image_and_tokens_model(v, inputs)
        return {"logits": out["logits"] * 1.01, "long": out["long"]}
    with pytest.raises(export.ExportParityError, match=r"output_0 \['logits'\]"):
        export.check_parity(result.model, off, v, [(image, tokens)], batches=[3])
    report = export.compare(result.model, _image_and_tokens_model, v, [(image, tokens)])
    assert report.ok and len(report.outputs) == 2


def _half_model(v, x):
    """bfloat16 weights, a float16 input and a float16 cast inside (as a Flax layer with
    ``dtype=jnp.float16`` would make)."""
    h = jnp.tanh(x.astype(jnp.bfloat16) @ v["w1"] + 0.1)
    h = (h.astype(jnp.float16) * v["scale"].astype(jnp.float16)).astype(jnp.bfloat16)
    return {"out": h @ v["w2"], "ids": jnp.argmax(h, axis=-1)}


def _half_inputs():
    keys = jax.random.split(jax.random.key(5), 3)
    v = {"w1": jax.random.normal(keys[0], (8, 16)).astype(jnp.bfloat16),
         "w2": jax.random.normal(keys[1], (16, 4)).astype(jnp.bfloat16),
         "scale": jnp.linspace(0.5, 1.5, 16, dtype=jnp.float32)}
    return v, jax.random.normal(keys[2], (3, 8)).astype(jnp.float16)


def test_as_float32_computes_the_half_model_in_float32():
    v, x = _half_inputs()
    fn32, v32, (x32,) = lowering.as_float32(_half_model, v, (x,))
    assert all(a.dtype == np.float32 for a in jax.tree.leaves((v32, x32)))
    got = jax.jit(fn32)(v32, x32)
    assert got["out"].dtype == np.float32 and got["ids"].dtype == np.int32
    closed = jax.make_jaxpr(fn32)(v32, x32)
    assert not lowering.uses_half_floats(closed)
    # The reference: the same model written in float32 by hand.
    h = np.tanh(np.asarray(x32) @ np.asarray(v32["w1"]) + 0.1) * v32["scale"]
    np.testing.assert_allclose(got["out"], h @ v32["w2"], rtol=1e-5, atol=1e-5)
    half = _half_model(v, x)["out"].astype(np.float32)         # bf16 keeps ~3 digits
    error = float(jnp.max(jnp.abs(got["out"] - half)) / jnp.max(jnp.abs(half)))
    assert 1e-4 < error < 0.05


def test_half_precision_model_exports_as_float32(caplog):
    v, x = _half_inputs()
    with caplog.at_level(logging.WARNING, logger="export.onnx_export"):
        result = export.to_onnx(_half_model, v, x)
    assert any("float32" in r.getMessage() for r in caplog.records)
    assert result.notes and "float32" in result.notes[0]
    assert result.parity.ok and result.parity.max_relative_error < 1e-5
    elem = result.model.graph.input[0].type.tensor_type.elem_type
    assert elem == 1                                       # onnx.TensorProto.FLOAT
    ids, out = export.parity.session(result.model).run(None, {"input_0": np.asarray(
        x, np.float32)})                                   # dict leaves: "ids", "out"
    half = _half_model(v, x)["out"].astype(jnp.float32)
    assert out.dtype == np.float32 and ids.dtype == np.int32
    assert np.max(np.abs(out - half)) < 0.05 * float(jnp.max(jnp.abs(half)))
