"""Quantizers only where onnxruntime has an integer kernel to use them: a hand-built graph
checked node by node, and the zoo ViT on real images checked against onnxruntime's
optimized graph and the JAX fake-quant model without the quantizers left out."""
import collections

import jax
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from data import real_images
from models import zoo
from quant import calibration, fakequant, qdq_export, qdq_placement
from quant.profile import load_profile

KERNELS = load_profile("ort_cpu_int8").integer_kernels


def _pair(tensor, nodes, consts):
    """tensor -> QuantizeLinear -> DequantizeLinear; returns the dequantized name."""
    consts.setdefault("s", np.asarray(0.05, np.float32))
    consts.setdefault("z", np.asarray(128, np.uint8))
    nodes += [helper.make_node("QuantizeLinear", [tensor, "s", "z"], [tensor + "_q"]),
              helper.make_node("DequantizeLinear", [tensor + "_q", "s", "z"],
                               [tensor + "_dq"])]
    return tensor + "_dq"


def test_pairs_before_float_ops_go_and_an_add_left_float_takes_its_inputs_along():
    """x -> MatMul(int8 weight) -> Softmax -> Add(y) -> ReduceSum, a pair on every
    activation: the MatMul's input pair stays (an integer MatMul reads it); the pairs before Softmax and
    ReduceSum go (no integer kernel); then the Add's output is no longer requantized, so
    QLinearAdd cannot form and the pairs on both its inputs go too."""
    nodes, consts = [], {"w_int": np.ones((4, 4), np.int8), "w_s": np.asarray(0.25, np.float32),
                         "w_z": np.asarray(0, np.int8)}
    nodes.append(helper.make_node("DequantizeLinear", ["w_int", "w_s", "w_z"], ["w"]))
    m_in = _pair("x", nodes, consts)
    nodes.append(helper.make_node("MatMul", [m_in, "w"], ["m"]))
    nodes.append(helper.make_node("Softmax", [_pair("m", nodes, consts)], ["s"]))
    nodes.append(helper.make_node("Add", [_pair("s", nodes, consts),
                                          _pair("y", nodes, consts)], ["a"]))
    nodes.append(helper.make_node("ReduceSum", [_pair("a", nodes, consts)], ["out"],
                                  keepdims=0))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 4])
                     for n in ("x", "y")],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model, removed = qdq_placement.drop_unpaid(helper.make_model(graph), KERNELS)
    assert sorted(removed) == ["a", "m", "s", "y"]
    quantized = [n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quantized == ["x"]
    readers = {i: n.op_type for n in model.graph.node for i in n.input}
    assert readers["m"] == "Softmax" and readers["a"] == "ReduceSum"


def _conv_relu_chain():
    """x -> pair -> Conv -> Relu -> pair -> Conv -> Relu -> GlobalAveragePool, int8
    weights: the pair on each Conv's output sits after its Relu."""
    rng = np.random.default_rng(0)
    nodes, consts = [], {}
    for k in (1, 2):
        consts[f"w{k}_int"] = rng.integers(-60, 60, (4, 4, 3, 3)).astype(np.int8)
        consts[f"w{k}_s"] = np.full(4, 0.01, np.float32)
        consts[f"w{k}_z"] = np.zeros(4, np.int8)
        nodes.append(helper.make_node("DequantizeLinear", [f"w{k}_int", f"w{k}_s", f"w{k}_z"],
                                      [f"w{k}"], axis=0))
    consts["s"], consts["z"] = np.asarray(0.05, np.float32), np.asarray(0, np.uint8)
    nodes.append(helper.make_node("Conv", [_pair("x", nodes, consts), "w1"], ["c1"],
                                  pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"]))
    nodes.append(helper.make_node("Conv", [_pair("r1", nodes, consts), "w2"], ["c2"],
                                  pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["c2"], ["r2"]))
    nodes.append(helper.make_node("GlobalAveragePool", ["r2"], ["out"]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 1, 1])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _integer_convs(model):
    """QLinearConv nodes in onnxruntime's optimized graph of ``model``."""
    import os
    import tempfile

    import onnx
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    return sum(n.op_type == "QLinearConv" for n in optimized.graph.node)


def test_a_relu_between_a_conv_and_its_quantizer_keeps_both_convs_integer():
    """onnxruntime folds the Relu into the QuantizeLinear after it, so the first Conv is a
    QLinearConv and the pair after its Relu must stay; the last Conv, read by a float
    pool, keeps the pair on its input (the first Conv's output). Without Relu in the
    profile the pairs unravel from the end and both Convs run in float."""
    model, removed = qdq_placement.drop_unpaid(_conv_relu_chain(), KERNELS)
    assert removed == [] and _integer_convs(model) == 1
    assert _integer_convs(_conv_relu_chain()) == 1    # what onnxruntime makes of it anyway
    without_relu = {k: v for k, v in KERNELS.items() if k not in ("Relu", "Clip")}
    unravelled, removed = qdq_placement.drop_unpaid(_conv_relu_chain(), without_relu)
    assert sorted(removed) == ["r1", "x"] and _integer_convs(unravelled) == 0


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown rules"):
        qdq_placement.drop_unpaid(helper.make_model(helper.make_graph([], "g", [], [])),
                                  {"MatMul": "always"})


@pytest.fixture(scope="module")
def vit_on_real_images():
    try:
        rgb = real_images.load("evaluation", size=(12, 12), limit=32, dtype=np.float32)
    except real_images.RealImagesUnavailable as error:
        pytest.skip(f"no real images here: {error}")
    x = (rgb.mean(-1, keepdims=True) - 0.5) / 0.25
    fn, variables, _ = zoo.instantiate("vit", batch=4)
    q = fakequant.quantize(fn, variables, x)
    qp = calibration.calibrate(q, variables, [x], method="mse")
    return q, variables, qp, x


def test_vit_int8_keeps_every_integer_kernel_with_fewer_quantizers(vit_on_real_images):
    """The attention projections (DenseGeneral, exported as MatMul) and MLPs keep their
    integer MatMuls; the pairs before LayerNorm, softmax and GELU are gone; onnxruntime
    agrees with the fake-quant model run without the sites the export left float."""
    q, variables, qp, x = vit_on_real_images
    every = qdq_export.to_qdq_onnx(q, variables, qp, x, drop_unpaid=False)
    placed = qdq_export.to_qdq_onnx(q, variables, qp, x)
    assert placed.unpaid_sites and qdq_export.unpaid_sites(placed.model) == \
        placed.unpaid_sites
    count = lambda m: collections.Counter(n.op_type for n in m.graph.node)  # noqa: E731
    assert count(placed.model)["QuantizeLinear"] < 0.7 * count(every.model)["QuantizeLinear"]
    check_every = qdq_export.check(every.model, q, variables, qp, x)
    check = qdq_export.check(placed.model, q, variables, qp, x)
    matmuls = lambda c: (c.integer_ops.get("QLinearMatMul", 0)          # noqa: E731
                         + c.integer_ops.get("MatMulIntegerToFloat", 0))
    assert matmuls(check) >= matmuls(check_every) > 0
    assert check.float_ops.get("MatMul", 0) == 0 and check.float_ops.get("Gemm", 0) <= 1
    assert check.top1_agreement == 1.0
    assert check.max_abs_error < 0.05 * check.output_scale
