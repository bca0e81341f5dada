"""Single-op parity of the ONNX importer's rules with onnxruntime, one tiny model per case.

Why: tests/models/test_onnx_import.py checks whole real models, which use a few dozen ops in
one form each; a rule's other forms (opset variants, attributes, modes, a channels-last input)
are only checked here. Each case is one node (plus the Constant/initializer inputs and the
few helper nodes it needs) saved with onnx.helper, imported with ``models.from_onnx`` and run
on an input made from a real evaluation image (channels tiled from the RGB picture, scaled to
about unit range), against onnxruntime's CPUExecutionProvider on the same input. Cases of a
rank-4 input to a non-spatial rule run twice: as the graph input (ONNX layout) and behind a
1x1 MaxPool (an exact identity) that makes the importer store it channels-last, so the axis
mapping of ``models.onnx_layout`` is exercised too. ``test_every_supported_op_has_a_case``
fails for a new rule without a case here.
"""
import dataclasses
import functools
from typing import Callable, Sequence, Tuple

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import jax

import models
from models import onnx_import, onnx_rules_spatial

TOLERANCE = 1e-5    # of the output's scale (max |reference|); worst measured 1.8e-6 (Resize)
SIZE = (16, 16)
INT64_MAX = 2 ** 63 - 1


@dataclasses.dataclass(frozen=True)
class Case:
    op: str                              # the op type under test (coverage test)
    build: Callable                      # input name -> (nodes, initializers)
    opset: int = 13
    shape: Tuple[int, ...] = (1, 3, *SIZE)
    values: str = "signed"               # input range: signed [-1, 1], positive, near_one
    outputs: Tuple[Tuple[str, int], ...] = (("y", T.FLOAT),)
    marks: Tuple = ()


def n(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def c(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def i64(name, value):
    return c(name, value, np.int64)


def per_channel(channels=3, rank=4):
    return np.linspace(-0.7, 0.9, channels, dtype=np.float32).reshape(
        (1, channels) + (1,) * (rank - 2))


def unary(op, **attrs):
    return lambda x: ([n(op, [x], **attrs)], [])


def with_const(op, value, first=False, **attrs):
    """op(x, const) (op(const, x) with ``first``): broadcasting against a constant."""
    return lambda x: ([n(op, ["k", x] if first else [x, "k"], **attrs)], [c("k", value)])


def after(prefix_op, prefix_value, op, *rest, **attrs):
    """op(prefix_op(x, prefix_value), *rest): spreads or quantizes the input first."""
    return lambda x: ([n(prefix_op, [x, "p"], ["q"]), n(op, ["q", *rest], **attrs)],
                      [c("p", prefix_value)] + [c(r, per_channel()) for r in rest if r])


def compare(op):
    """op(floor(4 x), per-channel integers): integer operands, so ties occur."""
    return lambda x: ([n("Mul", [x, "four"], ["q4"]), n("Floor", ["q4"], ["q"]),
                       n(op, ["q", "k"])],
                      [c("four", 4.0), c("k", np.round(per_channel() * 2))])


def on_integers(op, **attrs):
    """op(int64(10 x), 3): negative integer operands (truncating vs flooring)."""
    return lambda x: ([n("Mul", [x, "ten"], ["s"]), n("Cast", ["s"], ["i"], to=T.INT64),
                       n(op, ["i", "k"], **attrs)], [c("ten", 10.0), i64("k", 3)])


def of_three(op):
    """op(x, per-channel, per-column): a variadic op broadcasting two constants."""
    return lambda x: ([n(op, [x, "a", "b"])],
                      [c("a", per_channel()), c("b", np.linspace(-0.5, 0.5, 16))])


def nodes_with(*nodes, **consts):
    """A small graph from (op, inputs, outputs, attributes) rows; "x" is the input."""
    return lambda x: ([n(op, [x if i == "x" else i for i in ins], outs, **attrs)
                       for op, ins, outs, attrs in nodes],
                      [v if isinstance(v, onnx.TensorProto) else c(k, v)
                       for k, v in consts.items()])


def clip_inputs(x):
    return [n("Clip", [x, "lo", "hi"])], [c("lo", -0.4), c("hi", 0.6)]


BOOL, INT = (("y", T.BOOL),), (("y", T.INT64),)
SIGNED_BITS = np.array([[1, -1, 0]], np.float32).reshape(1, 3, 1, 1)

ELEMENTWISE = {
    "add_per_channel": Case("Add", with_const("Add", per_channel())),
    "sub_const_minus_x_rows": Case("Sub", with_const("Sub", np.linspace(-1, 1, 16), True)),
    "mul_x_by_x": Case("Mul", lambda x: ([n("Mul", [x, x])], [])),
    "div_by_per_channel": Case("Div", with_const("Div", np.abs(per_channel()) + 0.3)),
    "div_const_by_x": Case("Div", with_const("Div", 0.5, True), values="positive"),
    "div_int_truncates": Case("Div", on_integers("Div"), outputs=INT),
    "pow_square": Case("Pow", with_const("Pow", 2.0)),
    "pow_sqrt": Case("Pow", with_const("Pow", 0.5), values="positive"),
    "pow_per_channel": Case("Pow", with_const("Pow", per_channel() + 1.5), values="positive"),
    "mod_fmod_float": Case("Mod", with_const("Mod", 0.3, fmod=1)),
    "mod_fmod_int": Case("Mod", on_integers("Mod", fmod=1), outputs=INT),
    "mod_int": Case("Mod", on_integers("Mod"), outputs=INT),
    "max_of_three": Case("Max", of_three("Max")),
    "min_of_three": Case("Min", of_three("Min")),
    "sum_of_three": Case("Sum", lambda x: ([n("Sum", [x, x, "a"])], [c("a", per_channel())])),
    "mean_of_three": Case("Mean", of_three("Mean")),
    "equal_with_ties": Case("Equal", compare("Equal"), outputs=BOOL),
    "less_with_ties": Case("Less", compare("Less"), outputs=BOOL),
    "greater_with_ties": Case("Greater", compare("Greater"), outputs=BOOL),
    "less_or_equal_with_ties": Case("LessOrEqual", compare("LessOrEqual"), outputs=BOOL),
    "greater_or_equal_with_ties": Case("GreaterOrEqual", compare("GreaterOrEqual"), outputs=BOOL),
    "and": Case("And", nodes_with(("Greater", ["x", "zero"], ["a"], {}),
                                  ("Less", ["x", "k"], ["b"], {}), ("And", ["a", "b"], ["y"], {}),
                                  zero=0.0, k=per_channel() + 0.5), outputs=BOOL),
    "or": Case("Or", nodes_with(("Greater", ["x", "k"], ["a"], {}),
                                ("Less", ["x", "zero"], ["b"], {}), ("Or", ["a", "b"], ["y"], {}),
                                zero=-0.5, k=per_channel()), outputs=BOOL),
    "not": Case("Not", nodes_with(("Greater", ["x", "k"], ["a"], {}), ("Not", ["a"], ["y"], {}),
                                  k=per_channel()), outputs=BOOL),
    "where": Case("Where", nodes_with(("Greater", ["x", "zero"], ["a"], {}),
                                      ("Where", ["a", "x", "k"], ["y"], {}),
                                      zero=0.0, k=per_channel())),
    "neg": Case("Neg", unary("Neg")), "abs": Case("Abs", unary("Abs")),
    "sqrt": Case("Sqrt", unary("Sqrt"), values="positive"),
    "exp": Case("Exp", unary("Exp")),
    "log": Case("Log", unary("Log"), values="positive"),
    "reciprocal": Case("Reciprocal", unary("Reciprocal"), values="positive"),
    "floor": Case("Floor", after("Mul", 3.7, "Floor")),
    "ceil": Case("Ceil", after("Mul", 3.7, "Ceil")),
    "round_half_to_even": Case("Round", lambda x: (
        [n("Mul", [x, "four"], ["a"]), n("Floor", ["a"], ["b"]), n("Add", ["b", "half"], ["h"]),
         n("Round", ["h"])], [c("four", 4.0), c("half", 0.5)])),
    "sign": Case("Sign", after("Mul", SIGNED_BITS, "Sign")),
    "erf": Case("Erf", after("Mul", 2.0, "Erf")),
    "tanh": Case("Tanh", after("Mul", 3.0, "Tanh")),
    "relu": Case("Relu", unary("Relu")),
    "sigmoid": Case("Sigmoid", after("Mul", 4.0, "Sigmoid")),
    "softplus": Case("Softplus", after("Mul", 4.0, "Softplus")),
    "gelu_exact": Case("Gelu", after("Mul", 3.0, "Gelu"), opset=20),
    "gelu_tanh": Case("Gelu", after("Mul", 3.0, "Gelu", approximate="tanh"), opset=20),
    "hard_sigmoid": Case("HardSigmoid", after("Mul", 4.0, "HardSigmoid", alpha=0.3, beta=0.4)),
    "hard_swish": Case("HardSwish", after("Mul", 4.0, "HardSwish"), opset=14),
    "clip_min_max_inputs": Case("Clip", clip_inputs),
    "clip_bounds_from_constant_nodes": Case("Clip", lambda x: (
        [n("Constant", [], ["lo"], value_float=-0.4), n("Constant", [], ["hi"], value=c("v", 0.6)),
         n("Clip", [x, "lo", "hi"])], [])),
    "clip_min_only": Case("Clip", lambda x: ([n("Clip", [x, "lo"])], [c("lo", -0.4)])),
    "clip_max_only": Case("Clip", lambda x: ([n("Clip", [x, "", "hi"])], [c("hi", 0.6)])),
    "clip_no_bounds": Case("Clip", unary("Clip")),
    "clip_opset11_inputs": Case("Clip", clip_inputs, opset=11),
    "clip_opset10_attributes": Case("Clip", unary("Clip", min=-0.4, max=0.6), opset=10),
    "leaky_relu": Case("LeakyRelu", unary("LeakyRelu", alpha=0.1)),
    "elu": Case("Elu", after("Mul", 3.0, "Elu", alpha=0.5)),
    "selu": Case("Selu", after("Mul", 3.0, "Selu")),
    "prelu_per_channel": Case("PRelu", lambda x: ([n("PRelu", [x, "s"])],
                                                  [c("s", per_channel()[0])])),
    "prelu_scalar": Case("PRelu", with_const("PRelu", [0.25])),
}

MATRIX = {
    "matmul_rank4_by_matrix": Case("MatMul", with_const("MatMul", np.linspace(-1, 1, 16 * 8)
                                                        .reshape(16, 8))),
    "matmul_rank2": Case("MatMul", with_const("MatMul", np.cos(np.arange(48 * 10)).reshape(48, 10)),
                         shape=(4, 48)),
    "gemm_bias": Case("Gemm", lambda x: ([n("Gemm", [x, "b", "bias"])],
                                         [c("b", np.cos(np.arange(480)).reshape(48, 10)),
                                          c("bias", np.linspace(-1, 1, 10))]), shape=(4, 48)),
    "gemm_trans_b_alpha_beta": Case("Gemm", lambda x: (
        [n("Gemm", [x, "b", "bias"], transB=1, alpha=0.5, beta=2.0)],
        [c("b", np.sin(np.arange(480)).reshape(10, 48)), c("bias", np.linspace(-1, 1, 10))]),
        shape=(4, 48)),
    "gemm_trans_a_no_bias": Case("Gemm", lambda x: (
        [n("Gemm", [x, "b"], transA=1)], [c("b", np.sin(np.arange(40)).reshape(4, 10))]),
        shape=(4, 48)),
}

REDUCTIONS = {
    "softmax_channels": Case("Softmax", after("Mul", 4.0, "Softmax", axis=1)),
    "softmax_last": Case("Softmax", after("Mul", 4.0, "Softmax")),
    "softmax_opset11_flattened": Case("Softmax", after("Mul", 4.0, "Softmax", axis=1), opset=11),
    "softmax_opset11_last": Case("Softmax", after("Mul", 4.0, "Softmax", axis=3), opset=11),
    "log_softmax_channels": Case("LogSoftmax", after("Mul", 4.0, "LogSoftmax", axis=1)),
    "log_softmax_opset11": Case("LogSoftmax", after("Mul", 4.0, "LogSoftmax"), opset=11),
    "reduce_mean_spatial_keepdims": Case("ReduceMean", unary("ReduceMean", axes=[2, 3])),
    "reduce_mean_channels_dropped": Case("ReduceMean", unary("ReduceMean", axes=[1], keepdims=0)),
    "reduce_mean_last_dropped": Case("ReduceMean", unary("ReduceMean", axes=[-1], keepdims=0)),
    "reduce_mean_all": Case("ReduceMean", unary("ReduceMean", keepdims=0)),
    "reduce_mean_axes_input_opset18": Case("ReduceMean", lambda x: (
        [n("ReduceMean", [x, "axes"], keepdims=1)], [i64("axes", [1, 3])]), opset=18),
    "reduce_sum_axes_input": Case("ReduceSum", lambda x: (
        [n("ReduceSum", [x, "axes"], keepdims=0)], [i64("axes", [2])])),
    "reduce_sum_opset11_attribute": Case("ReduceSum", unary("ReduceSum", axes=[1, 2]), opset=11),
    "reduce_sum_noop_empty_axes": Case("ReduceSum", unary("ReduceSum", noop_with_empty_axes=1)),
    "reduce_max_spatial": Case("ReduceMax", unary("ReduceMax", axes=[2, 3])),
    "reduce_max_batch_dropped": Case("ReduceMax", unary("ReduceMax", axes=[0], keepdims=0)),
    "reduce_max_all_keepdims": Case("ReduceMax", unary("ReduceMax")),
    "reduce_min_channels": Case("ReduceMin", unary("ReduceMin", axes=[1])),
    "reduce_min_axes_input_opset18": Case("ReduceMin", lambda x: (
        [n("ReduceMin", [x, "axes"], keepdims=0)], [i64("axes", [-2])]), opset=18),
    "reduce_prod_width": Case("ReduceProd", unary("ReduceProd", axes=[3], keepdims=0),
                              values="near_one"),
    "reduce_l2_channels": Case("ReduceL2", unary("ReduceL2", axes=[1])),
}

SHAPE = {
    "shape": Case("Shape", unary("Shape"), outputs=INT),
    "shape_start_end": Case("Shape", unary("Shape", start=1, end=-1), opset=15, outputs=INT),
    "size": Case("Size", unary("Size"), outputs=INT),
    "cast_to_int32": Case("Cast", after("Mul", 10.0, "Cast", to=T.INT32),
                          outputs=(("y", T.INT32),)),
    "cast_to_float16": Case("Cast", unary("Cast", to=T.FLOAT16), outputs=(("y", T.FLOAT16),)),
    "reshape_zero_and_minus_one": Case("Reshape", lambda x: (
        [n("Reshape", [x, "s"])], [i64("s", [0, -1, 8])])),
    "reshape_shape_from_constant_node": Case("Reshape", lambda x: (
        [n("Constant", [], ["s"], value_ints=[1, 3, 256]), n("Reshape", [x, "s"])], [])),
    "reshape_flat": Case("Reshape", lambda x: ([n("Reshape", [x, "s"])], [i64("s", [1, 768])])),
    "flatten_axis1": Case("Flatten", unary("Flatten")),
    "flatten_axis2": Case("Flatten", unary("Flatten", axis=2)),
    "transpose_to_nhwc": Case("Transpose", unary("Transpose", perm=[0, 2, 3, 1])),
    "transpose_reversed": Case("Transpose", unary("Transpose")),
    "concat_channels_with_const": Case("Concat", lambda x: (
        [n("Concat", [x, "k"], axis=1)], [c("k", np.cos(np.arange(512)).reshape(1, 2, 16, 16))])),
    "concat_width_twice": Case("Concat", lambda x: ([n("Concat", [x, x], axis=-1)], [])),
    "split_input_sizes": Case("Split", lambda x: ([n("Split", [x, "s"], ["y", "z"], axis=1)],
                                                  [i64("s", [1, 2])]),
                              outputs=(("y", T.FLOAT), ("z", T.FLOAT))),
    "split_even_height": Case("Split", lambda x: ([n("Split", [x], ["y", "z"], axis=2)], []),
                              outputs=(("y", T.FLOAT), ("z", T.FLOAT))),
    "split_opset11_attribute": Case("Split", lambda x: (
        [n("Split", [x], ["y", "z"], axis=3, split=[5, 11])], []), opset=11,
        outputs=(("y", T.FLOAT), ("z", T.FLOAT))),
    "split_num_outputs_opset18": Case("Split", lambda x: (
        [n("Split", [x], ["y", "z", "w"], axis=-1, num_outputs=3)], []), opset=18,
        outputs=(("y", T.FLOAT), ("z", T.FLOAT), ("w", T.FLOAT))),
    "slice_steps_and_sentinel": Case("Slice", lambda x: (
        [n("Slice", [x, "s", "e", "a", "st"])],
        [i64("s", [1, 2, -3]), i64("e", [INT64_MAX, 14, 1]), i64("a", [1, 2, 3]),
         i64("st", [1, 3, -2])])),
    "slice_opset9_attributes": Case("Slice", unary("Slice", starts=[0, 4], ends=[2, -1],
                                                   axes=[1, 3]), opset=9),
    "gather_channels": Case("Gather", lambda x: ([n("Gather", [x, "i"], axis=1)],
                                                 [i64("i", [2, 0, -1])])),
    "gather_scalar_row": Case("Gather", lambda x: ([n("Gather", [x, "i"], axis=2)],
                                                   [i64("i", 5)])),
    "unsqueeze_axes_input": Case("Unsqueeze", lambda x: ([n("Unsqueeze", [x, "a"])],
                                                         [i64("a", [0, -1])])),
    "unsqueeze_opset11_attribute": Case("Unsqueeze", unary("Unsqueeze", axes=[2]), opset=11),
    "squeeze_axes_input": Case("Squeeze", lambda x: ([n("Squeeze", [x, "a"])], [i64("a", [0])])),
    "squeeze_all_ones": Case("Squeeze", unary("Squeeze")),
    "squeeze_opset11_attribute": Case("Squeeze", unary("Squeeze", axes=[0]), opset=11),
    "constant_of_shape": Case("ConstantOfShape", lambda x: (
        [n("Shape", [x], ["s"]), n("ConstantOfShape", ["s"], ["k"], value=c("v", [0.5])),
         n("Add", [x, "k"])], [])),
    "range_float": Case("Range", lambda x: (
        [n("Range", ["a", "b", "d"], ["r"]), n("Mul", [x, "r"])],
        [c("a", 0.25), c("b", 4.25), c("d", 0.25)])),
    "range_int_cast": Case("Range", lambda x: (
        [n("Range", ["a", "b", "d"], ["r"]), n("Cast", ["r"], ["f"], to=T.FLOAT),
         n("Add", [x, "f"])], [i64("a", 15), i64("b", -1), i64("d", -1)])),
    "expand_batch": Case("Expand", lambda x: ([n("Expand", [x, "s"])], [i64("s", [2, 1, 1, 1])])),
    "expand_const_to_input": Case("Expand", lambda x: (
        [n("Expand", ["k", "s"], ["e"]), n("Mul", [x, "e"])],
        [c("k", per_channel()), i64("s", [1, 3, 16, 16])])),
    "tile": Case("Tile", lambda x: ([n("Tile", [x, "r"])], [i64("r", [1, 2, 1, 3])])),
    "pad_constant_value": Case("Pad", lambda x: (
        [n("Pad", [x, "p", "v"])], [i64("p", [0, 1, 2, 0, 0, 0, 1, 3]), c("v", 0.5)])),
    "pad_reflect": Case("Pad", lambda x: ([n("Pad", [x, "p"], mode="reflect")],
                                          [i64("p", [0, 0, 2, 1, 0, 0, 1, 3])])),
    "pad_edge": Case("Pad", lambda x: ([n("Pad", [x, "p"], mode="edge")],
                                       [i64("p", [0, 0, 3, 0, 0, 0, 0, 2])])),
    "pad_negative_crops": Case("Pad", lambda x: ([n("Pad", [x, "p", "v"])],
                                                 [i64("p", [0, 0, -2, 1, 0, 0, 1, -3]),
                                                  c("v", -0.5)])),
    "pad_reflect_negative": Case("Pad", lambda x: ([n("Pad", [x, "p"], mode="reflect")],
                                                   [i64("p", [0, 0, -2, 2, 0, 0, 3, -1])])),
    "pad_opset11": Case("Pad", lambda x: ([n("Pad", [x, "p"])],
                                          [i64("p", [0, 0, 1, 1, 0, 0, 1, 1])]), opset=11),
    "pad_opset10_attributes": Case("Pad", unary("Pad", pads=[0, 0, 1, 2, 0, 0, 2, 1],
                                                value=-0.25), opset=10),
    "pad_axes_input_opset18": Case("Pad", lambda x: (
        [n("Pad", [x, "p", "", "a"], mode="reflect")], [i64("p", [1, 2, 2, 1]),
                                                       i64("a", [2, -1])]), opset=18),
    "identity": Case("Identity", unary("Identity")),
    "dropout_inference": Case("Dropout", unary("Dropout")),
    "dropout_ratio_input": Case("Dropout", lambda x: ([n("Dropout", [x, "r"])], [c("r", 0.3)])),
}


def conv(op, w_shape, bias=True, **attrs):
    """op(x, w, b) with a deterministic smooth kernel of shape ``w_shape``."""
    w = np.cos(0.7 * np.arange(np.prod(w_shape))).reshape(w_shape) / np.sqrt(np.prod(w_shape[1:]))
    out_channels = w_shape[1] * attrs.get("group", 1) if op == "ConvTranspose" else w_shape[0]
    inits = [c("w", w)] + ([c("b", np.linspace(-0.5, 0.5, out_channels))] if bias else [])
    return lambda x: ([n(op, [x, "w", "b"] if bias else [x, "w"], **attrs)], inits)


def resize(mode, scales=None, sizes=None, opset=13, **attrs):
    """Resize with scales or sizes as inputs (roi empty); opset 10: scales as input 1."""
    if opset < 11:
        return lambda x: ([n("Resize", [x, "sc"], mode=mode)], [c("sc", scales)])
    if sizes is not None:
        return lambda x: ([n("Resize", [x, "", "", "sz"], mode=mode, **attrs)],
                          [i64("sz", sizes)])
    return lambda x: ([n("Resize", [x, "roi", "sc"], mode=mode, **attrs)],
                      [c("roi", []), c("sc", scales)])


UP2, HALF = [1, 1, 2, 2], [1, 1, 0.5, 0.5]
SPATIAL = {
    "conv_3x3_pads": Case("Conv", conv("Conv", (4, 3, 3, 3), pads=[1, 1, 1, 1])),
    "conv_strides_dilations_asym_pads": Case("Conv", conv(
        "Conv", (5, 3, 3, 2), strides=[2, 1], dilations=[2, 3], pads=[2, 0, 1, 1])),
    "conv_depthwise": Case("Conv", conv("Conv", (3, 1, 3, 3), group=3, pads=[1, 1, 1, 1])),
    "conv_groups2": Case("Conv", conv("Conv", (6, 2, 3, 3), group=2), shape=(1, 4, *SIZE)),
    "conv_same_upper_stride2": Case("Conv", conv("Conv", (4, 3, 4, 4), bias=False,
                                                 strides=[2, 2], auto_pad="SAME_UPPER")),
    "conv_same_lower": Case("Conv", conv("Conv", (4, 3, 2, 2), auto_pad="SAME_LOWER")),
    "conv_valid_1x1": Case("Conv", conv("Conv", (2, 3, 1, 1), auto_pad="VALID")),
    "conv_1d": Case("Conv", conv("Conv", (4, 3, 3), pads=[1, 2], strides=[2]), shape=(1, 3, 32)),
    "conv_transpose_output_padding": Case("ConvTranspose", conv(
        "ConvTranspose", (3, 4, 3, 3), strides=[2, 2], pads=[1, 1, 1, 1],
        output_padding=[1, 1])),
    "conv_transpose_groups_dilation": Case("ConvTranspose", conv(
        "ConvTranspose", (4, 3, 3, 2), group=2, dilations=[2, 1], strides=[1, 2]),
        shape=(1, 4, *SIZE)),
    "conv_transpose_same_upper": Case("ConvTranspose", conv(
        "ConvTranspose", (3, 2, 3, 3), strides=[2, 2], auto_pad="SAME_UPPER", bias=False)),
    "conv_transpose_output_shape": Case("ConvTranspose", conv(
        "ConvTranspose", (3, 2, 4, 4), strides=[2, 2], output_shape=[33, 32])),
    "batch_norm": Case("BatchNormalization", lambda x: (
        [n("BatchNormalization", [x, "s", "b", "m", "v"], epsilon=1e-3)],
        [c("s", [0.5, 1.5, -1.0]), c("b", [0.1, -0.2, 0.3]), c("m", [0.2, -0.1, 0.0]),
         c("v", [0.5, 2.0, 0.01])])),
    "max_pool_3x3_s2_p1": Case("MaxPool", unary("MaxPool", kernel_shape=[3, 3], strides=[2, 2],
                                                pads=[1, 1, 1, 1])),
    "max_pool_ceil_mode": Case("MaxPool", unary("MaxPool", kernel_shape=[3, 3], strides=[2, 2],
                                                ceil_mode=1), shape=(1, 3, 15, 16)),
    # onnxruntime leaves dilations out of SAME pool padding (15x14 here, not the spec's
    # ceil(16 / 1)), so SAME_UPPER is compared without dilations
    "max_pool_dilated_pads": Case("MaxPool", unary(
        "MaxPool", kernel_shape=[2, 3], dilations=[2, 2], pads=[1, 2, 0, 1])),
    "max_pool_same_upper": Case("MaxPool", unary(
        "MaxPool", kernel_shape=[3, 2], strides=[2, 3], auto_pad="SAME_UPPER")),
    "max_pool_same_lower": Case("MaxPool", unary(
        "MaxPool", kernel_shape=[2, 2], auto_pad="SAME_LOWER")),
    "max_pool_2x2": Case("MaxPool", unary("MaxPool", kernel_shape=[2, 2], strides=[2, 2])),
    "average_pool_exclude_pad": Case("AveragePool", unary(
        "AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    "average_pool_include_pad": Case("AveragePool", unary(
        "AveragePool", kernel_shape=[3, 3], pads=[1, 0, 1, 2], count_include_pad=1)),
    "average_pool_ceil_mode": Case("AveragePool", unary(
        "AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
        shape=(1, 3, 16, 15)),
    "average_pool_ceil_include_pad": Case("AveragePool", unary(
        "AveragePool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, count_include_pad=1),
        shape=(1, 3, 16, 15)),
    "average_pool_same_upper": Case("AveragePool", unary(
        "AveragePool", kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    "global_average_pool": Case("GlobalAveragePool", unary("GlobalAveragePool")),
    "global_max_pool": Case("GlobalMaxPool", unary("GlobalMaxPool")),
    "resize_nearest_asymmetric_floor": Case("Resize", resize(
        "nearest", UP2, coordinate_transformation_mode="asymmetric", nearest_mode="floor")),
    "resize_nearest_half_pixel_default": Case("Resize", resize("nearest", [1, 1, 1.5, 3])),
    "resize_nearest_round_prefer_ceil": Case("Resize", resize(
        "nearest", [1, 1, 2.5, 0.5], nearest_mode="round_prefer_ceil")),
    "resize_nearest_ceil_align_corners": Case("Resize", resize(
        "nearest", sizes=[1, 3, 24, 10], nearest_mode="ceil",
        coordinate_transformation_mode="align_corners")),
    "resize_nearest_tf_half_pixel": Case("Resize", resize(
        "nearest", sizes=[1, 3, 20, 32], coordinate_transformation_mode="tf_half_pixel_for_nn")),
    "resize_linear_half_pixel": Case("Resize", resize("linear", UP2)),
    "resize_linear_half_pixel_down": Case("Resize", resize("linear", HALF)),
    "resize_linear_align_corners": Case("Resize", resize(
        "linear", sizes=[1, 3, 24, 10], coordinate_transformation_mode="align_corners")),
    "resize_linear_asymmetric": Case("Resize", resize(
        "linear", [1, 1, 1.5, 2], coordinate_transformation_mode="asymmetric")),
    "resize_linear_pytorch_half_pixel": Case("Resize", resize(
        "linear", sizes=[1, 3, 1, 24], coordinate_transformation_mode="pytorch_half_pixel")),
    "resize_opset11_roi_scales": Case("Resize", resize(
        "linear", UP2, opset=11, coordinate_transformation_mode="align_corners"), opset=11),
    "resize_opset10_nearest": Case("Resize", resize("nearest", UP2, opset=10), opset=10),
    "resize_opset10_linear": Case("Resize", resize("linear", [1, 1, 2, 1.5], opset=10),
                                  opset=10),
    "upsample_opset7_scales_attribute": Case("Upsample", unary(
        "Upsample", mode="nearest", scales=[1.0, 1.0, 2.0, 2.0]), opset=7),
    "upsample_opset9_nearest": Case("Upsample", lambda x: (
        [n("Upsample", [x, "sc"], mode="nearest")], [c("sc", [1, 1, 2, 3])]), opset=9),
    "upsample_opset9_linear": Case("Upsample", lambda x: (
        [n("Upsample", [x, "sc"], mode="linear")], [c("sc", UP2)]), opset=9),
}

CASES = {**ELEMENTWISE, **MATRIX, **REDUCTIONS, **SHAPE, **SPATIAL}
CHANNELS_LAST_PREFIX = "x_channels_last"


def _channels_last_variant(case: Case) -> bool:
    """Rank-4 inputs of rules that map axes or align operands also run stored channels-last
    (not spatial rules, which always are, nor element-wise ops of the input alone)."""
    if len(case.shape) != 4 or case.op in onnx_rules_spatial.RULES:
        return False
    nodes, initializers = case.build("x")
    return (onnx_import.RULES[case.op].layout != "elementwise" or len(nodes) > 1
            or bool(initializers) or len(nodes[0].input) > 1)


PARAMS = [pytest.param(name, False, id=name, marks=case.marks) for name, case in CASES.items()]
PARAMS += [pytest.param(name, True, id=f"{name}[channels_last]", marks=case.marks)
           for name, case in CASES.items() if _channels_last_variant(case)]


@functools.lru_cache(maxsize=None)
def _rgb(size: Tuple[int, int]) -> np.ndarray:
    from data import real_images
    image = real_images.load("evaluation", size=size, limit=1, dtype=np.float32)
    return np.transpose(image, (0, 3, 1, 2))                     # (1, 3, H, W) in [0, 1]


def image_input(shape: Sequence[int], values: str) -> np.ndarray:
    """An input of ``shape`` from a real picture: NCHW channels tiled from RGB (each copy
    shifted along the width so no two channels are equal); other ranks take the pixels of a
    big enough picture in order. Ranges: signed [-1, 1], positive [0.1, 1.1], near_one
    [0.9, 1.1]."""
    if len(shape) == 4:
        rgb = _rgb(tuple(shape[2:]))
        x = np.concatenate([np.roll(rgb[:, k % 3:k % 3 + 1], 3 * (k // 3), axis=-1)
                            for k in range(shape[1])], axis=1)
        x = np.repeat(x, shape[0], axis=0)
    else:
        side = int(np.ceil(np.sqrt(np.prod(shape) / 3)))
        x = _rgb((side, side)).reshape(-1)[:np.prod(shape)].reshape(shape)
    scale, offset = {"signed": (2.0, -1.0), "positive": (1.0, 0.1), "near_one": (0.2, 0.9)}[values]
    return np.ascontiguousarray(x * scale + offset, np.float32)


def onnx_model(case: Case, channels_last: bool) -> onnx.ModelProto:
    x = CHANNELS_LAST_PREFIX if channels_last else "x"
    nodes, initializers = case.build(x)
    if channels_last:     # a 1x1 MaxPool is an exact identity that the importer stores NHWC
        nodes = [n("MaxPool", ["x"], [x], kernel_shape=[1, 1])] + nodes
    graph = helper.make_graph(
        nodes, "case", [helper.make_tensor_value_info("x", T.FLOAT, list(case.shape))],
        [helper.make_tensor_value_info(name, dtype, None) for name, dtype in case.outputs],
        initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])


def _relative_error(y, reference) -> float:
    scale = float(np.max(np.abs(reference.astype(np.float64))))
    return float(np.max(np.abs(y.astype(np.float64) - reference))) / max(scale, 1e-30)


@pytest.mark.parametrize("name,channels_last", PARAMS)
def test_rule_matches_onnxruntime(name, channels_last, tmp_path):
    import onnxruntime as ort
    case = CASES[name]
    path = tmp_path / f"{name}.onnx"
    onnx.save(onnx_model(case, channels_last), str(path))
    x = image_input(case.shape, case.values)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    references = session.run(None, {"x": x})
    fn, variables, _ = models.from_onnx(path)
    ys = jax.jit(fn)(variables, x)
    ys = ys if isinstance(ys, tuple) else (ys,)
    assert len(ys) == len(references)
    for y, reference in zip(ys, references):
        y = np.asarray(y)
        assert y.shape == reference.shape
        if np.issubdtype(reference.dtype, np.floating):
            assert np.all(np.isfinite(reference))
            error = _relative_error(y, reference)
            print(f"relative error {name}{'[channels_last]' if channels_last else ''}: "
                  f"{error:.2e}")
            assert error <= TOLERANCE
        else:                                        # integers, booleans: exact
            np.testing.assert_array_equal(y, reference)


def test_every_supported_op_has_a_case():
    assert sorted({case.op for case in CASES.values()}) == onnx_import.supported_ops()


def test_inputs_are_real_pictures_in_range():
    x = image_input((1, 4, *SIZE), "signed")
    assert -1.0 <= x.min() < -0.5 and 0.5 < x.max() <= 1.0
    assert np.std(x) > 0.1                                   # not a flat picture
    assert not np.array_equal(x[:, 0], x[:, 3])              # tiled channels differ
