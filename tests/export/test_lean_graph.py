"""The exported graph carries no layout glue around constant-matrix Einsums (issue 20).

jax2onnx writes ``jnp.einsum`` with a constant matrix (the TFLite importer's bilinear resizes,
``oh,nhwc->nowc``) as an NHWC Einsum between Transposes. The MediaPipe selfie segmentation
export had 10 Transposes and 6 Einsums (3 resizes) for that, whose cost a pruned copy pays
in full; ``transpose_sinking`` now absorbs the Transposes into the Einsum equations and
``graph_passes.einsums_to_matmul`` turns each per-axis map into a MatMul on the NCHW tensor:
1 Transpose (the NHWC input) and 6 MatMuls, no Einsum, and no Shape/Gather/Expand (gone
since the importer's whole-window mean). Measured onnxruntime 1 thread, batch 1,
interleaved on a loaded 2-core machine: see the commit message.

References are independent of our code: numpy in float64 for the small graph, LiteRT
(XNNPACK) on real evaluation images for the selfie models, besides the export's own parity
check (onnxruntime vs JAX, 1e-4 of the output scale).
"""
import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import export
import models
from data import real_images
from export.parity import session
from models import real_tflite_models
from models.tflite_rules_spatial import bilinear_matrix

GLUE = ("Shape", "Gather", "Expand", "Einsum", "ConstantOfShape", "Where")
SELFIE_TRANSPOSES = 1      # the NHWC image into the first Conv; was 10
SELFIE_MATMULS = 6         # 3 separable bilinear resizes, 2 MatMuls each
MASK_ATOL = 3e-4           # as tests/models/test_tflite_import.py: float32's limit on the mask


def _conv1x1(x, w):
    return jax.lax.conv_general_dilated(x, w[None, None], (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _resize_net(v, x):
    """1x1 conv, ReLU, a separable 2x bilinear resize written like the TFLite importer's,
    a channel mix by einsum (not a MatMul in NCHW: it stays an Einsum), a 1x1 conv."""
    y = jax.nn.relu(_conv1x1(x, v["w1"]))
    y = jnp.einsum("oh,nhwc->nowc", v["rows"], y)
    y = jnp.einsum("ow,nhwc->nhoc", v["cols"], y)
    y = jnp.einsum("oc,nhwc->nhwo", v["mix"], y)
    return _conv1x1(y, v["w2"])


def _resize_net_numpy(v, x):
    v = {k: np.asarray(a, np.float64) for k, a in v.items()}
    y = np.maximum(np.einsum("nhwc,co->nhwo", x, v["w1"]), 0.0)
    y = np.einsum("oh,nhwc->nowc", v["rows"], y)
    y = np.einsum("ow,nhwc->nhoc", v["cols"], y)
    y = np.einsum("oc,nhwc->nhwo", v["mix"], y)
    return np.einsum("nhwc,co->nhwo", y, v["w2"])


def test_constant_matrix_einsums_become_matmuls_without_transposes():
    rng = np.random.default_rng(0)
    v = {"w1": rng.normal(size=(3, 6)).astype(np.float32),
         "rows": bilinear_matrix(8, 16, False, True),
         "cols": bilinear_matrix(10, 20, True, False),
         "mix": rng.normal(size=(5, 6)).astype(np.float32),
         "w2": rng.normal(size=(5, 4)).astype(np.float32)}
    x = rng.uniform(size=(2, 8, 10, 3)).astype(np.float32)
    result = export.to_onnx(_resize_net, v, x)
    counts = collections.Counter(result.op_counts)
    assert counts["MatMul"] == 2 and counts["Einsum"] == 1, counts     # resize; channel mix
    assert counts["Transpose"] <= 2, counts          # NHWC in, NHWC out; was 6
    want = _resize_net_numpy(v, x)
    got = session(result.model).run(None, {result.input_names[0]: x})[0]
    assert got.shape == want.shape == (2, 16, 20, 4)
    error = np.abs(got - want).max() / np.abs(want).max()
    assert error < 1e-5, error                       # float32 rounding only


def _selfie(name):
    try:
        path = real_tflite_models.path(name)
    except real_tflite_models.ModelNotFetched as error:
        pytest.skip(str(error))
    try:
        images = real_images.load("evaluation", size=real_tflite_models.MODELS[name].input_hw,
                                  limit=4)
    except real_images.RealImagesUnavailable as error:
        pytest.skip(str(error))
    return path, (np.asarray(images) / 255.0).astype(np.float32)


def _litert_mask(path, x):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        pytest.skip(f"ai-edge-litert is not installed: {error}")
    interpreter = Interpreter(model_content=path.read_bytes(), num_threads=1)
    interpreter.allocate_tensors()
    masks = []
    for image in x:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        masks.append(np.array(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])))
    return np.concatenate(masks)


@pytest.mark.parametrize("name", tuple(real_tflite_models.MODELS))
def test_selfie_export_has_no_glue(name):
    """The exported selfie graph: no Shape/Gather/Expand/Einsum, one Transpose, the resizes
    as MatMuls; onnxruntime vs JAX within 1e-4 (the export's check) and vs LiteRT on 4 real
    images within the importer's own tolerance."""
    path, x = _selfie(name)
    fn, variables, _ = models.from_tflite(str(path))
    result = export.to_onnx(fn, variables, x[:1])     # parity at batch 1 and 2, <= 1e-4
    counts = collections.Counter(result.op_counts)
    assert not any(counts[op] for op in GLUE), counts
    assert counts["Transpose"] <= SELFIE_TRANSPOSES, counts
    assert counts["MatMul"] == SELFIE_MATMULS, counts
    assert result.parity.max_relative_error <= 1e-4
    got = session(result.model).run(None, {result.input_names[0]: x})[0]
    want = _litert_mask(path, x)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= MASK_ATOL
    # vs JAX on all 4 images: float32's limit on the mask, 1.6e-4 on one portrait image
    # with the Einsum graph and to the last digit the same with the MatMuls.
    assert np.abs(got - np.asarray(jax.jit(fn)(variables, x))).max() <= MASK_ATOL
    assert want.min() < 0.1 and want.max() > 0.9      # a real mask, not a constant
