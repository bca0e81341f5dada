"""The ONNX clean-up on hand-built graphs, against numpy references (no JAX, no jax2onnx).

Each graph has the form jax2onnx emits (NHWC pooling over unsqueezed 6-D tensors, Transposes
around a Conv, BatchNorm as Sub/Div/Mul/Add, ReLU as Max(x, 0)); the cleaned graph must
compute the same numbers in onnxruntime and have the ops the passes promise.
"""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from export import graph_passes
from export.parity import session

RNG = np.random.default_rng(0)


def _model(nodes, inputs, consts, out_shape, opset=17):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model, x):
    return session(model, optimize=False).run(None, {"x": x})[0]


def _nhwc_pool(kind, merged_unsqueeze):
    """x (B,8,8,3) -> 2x2 stride-2 pooling, written as jax2onnx writes it (or with the two
    Unsqueezes merged into one, as onnxslim and onnxoptimizer leave it)."""
    consts = {"a0": np.array([0], np.int64), "a1": np.array([1], np.int64),
              "a01": np.array([0, 1], np.int64)}
    if merged_unsqueeze:
        nodes = [helper.make_node("Unsqueeze", ["x", "a01"], ["u1"])]
    else:
        nodes = [helper.make_node("Unsqueeze", ["x", "a0"], ["u0"]),
                 helper.make_node("Unsqueeze", ["u0", "a1"], ["u1"])]
    window = dict(strides=[1, 2, 2, 1], pads=[0] * 8)
    if kind == "max":
        nodes.append(helper.make_node("MaxPool", ["u1"], ["p"], kernel_shape=[1, 2, 2, 1],
                                      **window))
    else:                                   # window sum: all-ones 6-D kernel
        consts["ones"] = np.ones((1, 1, 1, 2, 2, 1), np.float32)
        nodes.append(helper.make_node("Conv", ["u1", "ones"], ["p"], **window))
    nodes.append(helper.make_node("Squeeze", ["p", "a01"], ["y"]))
    return _model(nodes, [("x", ["B", 8, 8, 3])], consts, ["B", 4, 4, 3])


@pytest.mark.parametrize("kind", ["max", "sum"])
@pytest.mark.parametrize("merged", [False, True])
def test_nhwc_pooling_becomes_2d_pooling_with_same_values(kind, merged):
    x = RNG.standard_normal((2, 8, 8, 3)).astype(np.float32)
    windows = x.reshape(2, 4, 2, 4, 2, 3)
    expected = windows.max(axis=(2, 4)) if kind == "max" else windows.sum(axis=(2, 4))
    clean = graph_passes.optimize(_nhwc_pool(kind, merged))
    counts = graph_passes.count_ops(clean)
    pool = "MaxPool" if kind == "max" else "AveragePool"
    assert counts.get(pool) == 1 and not {"Unsqueeze", "Squeeze", "Conv"} & set(counts)
    node = next(n for n in clean.graph.node if n.op_type == pool)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert list(attrs["kernel_shape"]) == [2, 2] and list(attrs["strides"]) == [2, 2]
    np.testing.assert_allclose(_run(clean, x), expected, rtol=1e-6, atol=1e-6)


def test_pool_with_unexpected_squeeze_axes_is_left_alone():
    model = _nhwc_pool("max", merged_unsqueeze=False)
    model.graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), "a0only"))
    model.graph.node[-1].input[1] = "a0only"          # squeezes one axis: not the pattern
    counts = graph_passes.count_ops(graph_passes.optimize(model))
    assert counts.get("Unsqueeze", 0) >= 1 and counts.get("Squeeze") == 1


def _conv_bn_relu_block():
    """x NHWC -> Transpose -> Conv -> Transpose back -> (x - m) / s * g + b -> Max(., 0) ->
    Min(., 6), like jax2onnx's ResNet/MobileNet blocks; returns the model and a numpy
    reference of it."""
    w = RNG.standard_normal((6, 4, 3, 3)).astype(np.float32)
    m, s, g, b = (RNG.standard_normal(6).astype(np.float32) for _ in range(4))
    s = np.abs(s) + 0.5
    consts = dict(w=w, m=m, s=s, g=g, b=b, zero=np.float32(0), six=np.float32(6))
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c"], ["ct"], perm=[0, 2, 3, 1]),
             helper.make_node("Sub", ["ct", "m"], ["n0"]),
             helper.make_node("Div", ["n0", "s"], ["n1"]),
             helper.make_node("Mul", ["n1", "g"], ["n2"]),
             helper.make_node("Add", ["n2", "b"], ["n3"]),
             helper.make_node("Max", ["n3", "zero"], ["r"]),
             helper.make_node("Min", ["r", "six"], ["y"])]
    model = _model(nodes, [("x", ["B", 5, 5, 4])], consts, ["B", 5, 5, 6])

    def reference(x):
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        patches = np.stack([padded[:, i:i + 5, j:j + 5] for i in range(3) for j in range(3)], 3)
        conv = np.einsum("bhwkc,ock->bhwo", patches, w.reshape(6, 4, 9))
        return np.clip((conv - m) / s * g + b, 0, 6)
    return model, reference


def test_conv_bn_relu6_becomes_one_conv_and_a_clip():
    model, reference = _conv_bn_relu_block()
    x = RNG.standard_normal((3, 5, 5, 4)).astype(np.float32)
    clean = graph_passes.optimize(model)
    counts = graph_passes.count_ops(clean)
    assert counts.get("Conv") == 1 and counts.get("Clip") == 1
    assert not {"Sub", "Div", "Mul", "Add", "Max", "Min"} & set(counts)   # BN in the Conv
    assert counts.get("Transpose", 0) == 2               # only at the input and the output
    np.testing.assert_allclose(_run(clean, x), reference(x), rtol=1e-4, atol=1e-4)


def test_skipping_a_pass_leaves_its_ops_and_unknown_names_are_refused():
    model, reference = _conv_bn_relu_block()
    x = RNG.standard_normal((2, 5, 5, 4)).astype(np.float32)
    kept = graph_passes.optimize(model, skip=["canonicalize"])
    assert {"Max", "Min"} <= set(graph_passes.count_ops(kept))
    unsunk = graph_passes.optimize(model, skip=["sink_transposes"])
    # the BN affine stays behind the Transpose after the Conv, in NHWC, and cannot fold
    assert {"Mul", "Add"} <= set(graph_passes.count_ops(unsunk))
    for variant in (kept, unsunk):
        np.testing.assert_allclose(_run(variant, x), reference(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="unknown passes to skip.*'fold_bn'"):
        graph_passes.optimize(model, skip=["fold_bn"])


def _conv_times_width_vector():
    """Conv with 4 output channels on a 4-wide image, then a Mul by a (4,) vector that
    broadcasts along W, not along the channels (onnxslim 0.1.98's FusionConvMul folds it into
    the output channels: error 3.05)."""
    w = RNG.standard_normal((4, 3, 1, 1)).astype(np.float32)
    scale = np.array([1.0, -2.0, 3.0, 0.5], np.float32)
    model = _model([helper.make_node("Conv", ["x", "w"], ["c"]),
                    helper.make_node("Mul", ["c", "scale"], ["y"])],
                   [("x", ["B", 3, 4, 4])], dict(w=w, scale=scale), ["B", 4, 4, 4])
    return model, lambda x: np.einsum("bchw,oc->bohw", x, w[:, :, 0, 0]) * scale


def test_conv_then_mul_along_width_keeps_its_values():
    model, reference = _conv_times_width_vector()
    x = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(graph_passes.optimize(model), x), reference(x),
                               rtol=1e-5, atol=1e-5)


def test_constant_bool_where_is_folded_so_onnxruntime_can_run_the_model():
    """A causal mask built from constants with Where on bool (transformer_lm): onnxruntime has
    no bool Where kernel, so the model runs only once it is folded (onnxslim, which folds
    through onnxruntime, leaves it)."""
    rows = np.arange(4)[:, None] >= np.arange(4)[None, :]
    consts = {"rows": np.arange(4, dtype=np.int64)[:, None],
              "cols": np.arange(4, dtype=np.int64)[None, :],
              "yes": np.ones((4, 4), bool), "no": np.zeros((4, 4), bool),
              "neg": np.float32(-1e9)}
    nodes = [helper.make_node("GreaterOrEqual", ["rows", "cols"], ["ge"]),
             helper.make_node("Where", ["ge", "yes", "no"], ["mask"]),
             helper.make_node("Where", ["mask", "x", "neg"], ["y"])]
    model = _model(nodes, [("x", ["B", 4, 4])], consts, ["B", 4, 4])
    clean = graph_passes.optimize(model)
    assert graph_passes.count_ops(clean) == {"Where": 1}
    x = RNG.standard_normal((2, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(clean, x), np.where(rows, x, np.float32(-1e9)))


@pytest.mark.parametrize("shape", [("B", 4, 4, 1), ("B", 1, 1, 5)])
def test_transpose_of_size_one_axes_becomes_reshape(shape):
    """A 1-channel image or an SE gate (B,1,1,C) moved to NCHW moves no data: a Reshape."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Abs", ["t"], ["y"])]
    out = [shape[0], shape[3], shape[1], shape[2]]
    clean = graph_passes.optimize(_model(nodes, [("x", list(shape))], {}, out))
    assert graph_passes.count_ops(clean) == {"Reshape": 1, "Abs": 1}
    x = RNG.standard_normal((3,) + shape[1:]).astype(np.float32)
    np.testing.assert_array_equal(_run(clean, x), np.abs(x.transpose(0, 3, 1, 2)))


def test_transpose_that_moves_data_stays():
    nodes = [helper.make_node("Transpose", ["x"], ["y"], perm=[0, 3, 1, 2])]
    clean = graph_passes.optimize(_model(nodes, [("x", ["B", 4, 4, 2])], {}, ["B", 2, 4, 4]))
    assert graph_passes.count_ops(clean) == {"Transpose": 1}


OUT = {(0, 2, 3, 1): ["B", 4, 5, 3], (0, 1, 3, 2): ["B", 3, 5, 4]}


@pytest.mark.parametrize("second, expected_ops", [
    ([0, 2, 3, 1], {"Abs": 1}),                        # the inverse: both go
    ([0, 1, 3, 2], {"Transpose": 1, "Abs": 1}),        # composed into one
])
def test_consecutive_transposes_compose_and_identities_go(second, expected_ops):
    """Transposes that met are composed (and dropped when the product is the identity),
    Identity nodes are bypassed; the values equal numpy's transposes of the input."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Identity", ["t"], ["i"]),
             helper.make_node("Transpose", ["i"], ["u"], perm=second),
             helper.make_node("Abs", ["u"], ["y"])]
    clean = graph_passes.optimize(_model(nodes, [("x", ["B", 4, 5, 3])], {}, OUT[tuple(second)]))
    assert graph_passes.count_ops(clean) == expected_ops
    x = RNG.standard_normal((2, 4, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(_run(clean, x),
                                  np.abs(x.transpose(0, 3, 1, 2).transpose(second)))


def test_identity_transpose_that_is_the_graph_output_keeps_the_output_name():
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Transpose", ["t"], ["y"], perm=[0, 2, 3, 1])]
    clean = graph_passes.optimize(_model(nodes, [("x", ["B", 4, 5, 3])], {}, ["B", 4, 5, 3]))
    assert [o.name for o in clean.graph.output] == ["y"]
    assert "Transpose" not in graph_passes.count_ops(clean)
    x = RNG.standard_normal((2, 4, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(_run(clean, x), x)
