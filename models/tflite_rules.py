"""The rule table of the TFLite importer: one JAX rule per builtin op (or custom op code).

Why a table: adding an op is one entry, and ``models.tflite_import`` can name every
supported op when a model has another. Each ``Rule.fn(op, *inputs)`` gets the operator
(options, static shapes) and its inputs (JAX arrays, variables, or static numpy constants for
integer shapes/axes) and returns the output array (or a tuple). ``Rule.kernels`` maps an
input position to the layout change applied ONCE at import to a constant weight there.
Everything is NHWC, like TFLite; the batch axis is taken from the input, never from the
stored shape, so one import runs any batch. Convolutions, pooling and resizing are in
``models.tflite_rules_spatial``; this file has the element-wise and layout ops.
"""
import dataclasses
from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Rule:
    fn: Callable
    kernels: Dict[int, Callable] = dataclasses.field(default_factory=dict)


# TFLite ActivationFunctionType -> the function fused after an op.
FUSED = {
    0: lambda x: x,
    1: jax.nn.relu,
    2: lambda x: jnp.clip(x, -1.0, 1.0),
    3: lambda x: jnp.clip(x, 0.0, 6.0),
    4: jnp.tanh,
    5: lambda x: jnp.where(x < 0, -1.0, 1.0).astype(x.dtype),
}


def fused(op, x):
    """Applies the op's fused activation (none when the options have no such field)."""
    code = getattr(op.options, "fusedActivationFunction", 0) if op.options is not None else 0
    return FUSED[int(code)](x)


def static_ints(value, what: str, op):
    """A compile-time integer constant (shape, axis, size): keeps shapes static."""
    if isinstance(value, (np.ndarray, np.generic)) and np.issubdtype(value.dtype, np.integer):
        return [int(v) for v in np.asarray(value).reshape(-1)]
    raise NotImplementedError(f"TFLite op {op.op} (operator {op.index}): the {what} must be "
                              "a constant integer tensor")


def _binary(f):
    return Rule(lambda op, a, b: fused(op, f(a, b)))


def _hard_swish(x):
    """x times its gate: one product of two activations, so an int8 runtime with an integer
    Mul (onnxruntime's QLinearMul) runs it on int8 tensors (x * clip(...) / 6 would
    leave a float product scaled by a constant, which no integer kernel reads)."""
    return x * (jnp.clip(x + 3.0, 0.0, 6.0) / 6.0)


def _prelu(op, x, alpha):
    return jnp.where(x >= 0, x, alpha * x)


def _leaky_relu(op, x):
    return jnp.where(x >= 0, x, np.float32(op.options.alpha) * x)


def _softmax(op, x):
    beta = float(op.options.beta) if op.options is not None else 1.0
    return jax.nn.softmax(x * beta if beta != 1.0 else x, axis=-1)


def _axes(op, axis, ndim):
    return tuple(sorted(a % ndim for a in static_ints(axis, "axis", op)))


def mean(x, axes, keepdims: bool = False):
    """The mean over ``axes``, one axis at a time.

    Why one axis at a time: XLA:CPU sums a multi-axis reduction in one sequential float32
    loop whose rounding error grows with the number of cells. On the 64x64 global pooling of
    selfie_segmentation that was 4.8e-6 of the scale (against float64), which the network
    amplified 50x, to 2.3e-4 at the mask; axis by axis it is 1e-7 (measured on real images).
    Spatial axes of an NHWC tensor that stay as unit axes (global pooling, MEAN with keepDims)
    are summed by full-length windows: the result has its unit axes without a broadcast, so
    the ONNX export is two AveragePools, not a ReduceSum plus the Shape/Gather/Concat/Expand
    cluster that restoring the axes under a symbolic batch costs.
    """
    axes = tuple(sorted(a % x.ndim for a in axes))
    if keepdims and x.ndim == 4 and set(axes) <= {1, 2}:
        for a in axes:
            window = tuple(x.shape[a] if i == a else 1 for i in range(4))
            x = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, (1,) * 4, "VALID")
            x = x / x.dtype.type(window[a])
        return x
    y = x
    for a in reversed(axes):
        y = jnp.mean(y, axis=a)
    return jnp.expand_dims(y, axes) if keepdims else y


def _reduce(f):
    def rule(op, x, axis):
        keep = bool(op.options.keepDims) if op.options is not None else False
        return f(x, _axes(op, axis, x.ndim), keep)
    return Rule(rule)


def _reduce_jnp(f):
    return _reduce(lambda x, axes, keep: f(x, axis=axes, keepdims=keep))


def _concatenation(op, *xs):
    return fused(op, jnp.concatenate(xs, axis=int(op.options.axis) % xs[0].ndim))


def _target_shape(op, x, shape):
    """The new shape, with the stored batch replaced by the input's batch when the reshape
    keeps the batch axis (so an import at batch 1 runs any batch)."""
    shape = list(shape)
    if (shape and x.ndim and shape[0] == op.batch and op.in_shapes[0]
            and op.in_shapes[0][0] == op.batch):
        shape[0] = -1 if op.batch == 1 and -1 not in shape[1:] else shape[0]
        if shape[0] == -1 and -1 in shape[1:]:
            shape[0] = op.batch
    return shape


def _reshape(op, x, shape=None):
    if shape is not None:
        new = static_ints(shape, "new shape", op)
    elif op.options is not None and op.options.newShape is not None:
        new = [int(v) for v in op.options.newShape]
    else:
        new = list(op.out_shapes[0])
    return jnp.reshape(x, _target_shape(op, x, new))


def _squeeze(op, x):
    dims = op.options.squeezeDims if op.options is not None else None
    axes = tuple(int(d) % x.ndim for d in dims) if dims is not None and len(dims) else None
    return jnp.squeeze(x, axis=axes)


def _transpose(op, x, perm):
    return jnp.transpose(x, static_ints(perm, "permutation", op))


def _pad(op, x, paddings, value=None):
    pads = np.asarray(static_ints(paddings, "paddings", op)).reshape(-1, 2)
    fill = 0.0 if value is None else value
    return jnp.pad(x, [tuple(int(v) for v in p) for p in pads], constant_values=fill)


def _depth_to_space(op, x):
    b = int(op.options.blockSize)
    n, h, w, c = x.shape
    y = x.reshape(n, h, w, b, b, c // (b * b)).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, h * b, w * b, c // (b * b))


def _space_to_depth(op, x):
    b = int(op.options.blockSize)
    n, h, w, c = x.shape
    y = x.reshape(n, h // b, b, w // b, b, c).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, h // b, w // b, b * b * c)


def _bit(mask: int, i: int) -> bool:
    return bool((int(mask) >> i) & 1)


def _strided_slice(op, x, begin, end, strides):
    o = op.options
    if o.ellipsisMask or o.newAxisMask:
        raise NotImplementedError(f"TFLite op STRIDED_SLICE (operator {op.index}): ellipsis "
                                  "and new-axis masks are not supported")
    begin, end = static_ints(begin, "begin", op), static_ints(end, "end", op)
    strides = static_ints(strides, "strides", op)
    index = []
    for i, (b, e, s) in enumerate(zip(begin, end, strides)):
        if _bit(o.shrinkAxisMask, i):
            index.append(b)
            continue
        if getattr(o, "offset", False):
            e = b + e
        index.append(slice(None if _bit(o.beginMask, i) else b,
                           None if _bit(o.endMask, i) else e, s))
    return x[tuple(index)]


def _slice(op, x, begin, size):
    begin, size = static_ints(begin, "begin", op), static_ints(size, "size", op)
    return x[tuple(slice(b, None if s < 0 else b + s) for b, s in zip(begin, size))]


def _dequantize(op, x):
    return x.astype(jnp.float32)


def _fully_connected(op, x, w, b=None):
    """y = x W^T + b; ``w`` is [in, out] (transposed at import, Flax's Dense layout)."""
    y = jnp.dot(x if op.options.keepNumDims else x.reshape(-1, w.shape[0]), w)
    return fused(op, y if b is None else y + b)


def _mirror_pad(op, x, paddings):
    pads = np.asarray(static_ints(paddings, "paddings", op)).reshape(-1, 2)
    mode = "reflect" if int(op.options.mode) == 0 else "symmetric"
    return jnp.pad(x, [tuple(int(v) for v in p) for p in pads], mode=mode)


def _split(op, axis, x):
    k = int(op.options.numSplits)
    return tuple(jnp.split(x, k, axis=static_ints(axis, "axis", op)[0] % x.ndim))


ELEMENTWISE: Dict[str, Rule] = {
    "ADD": _binary(jnp.add), "SUB": _binary(jnp.subtract), "MUL": _binary(jnp.multiply),
    "DIV": _binary(jnp.divide), "MAXIMUM": Rule(lambda op, a, b: jnp.maximum(a, b)),
    "MINIMUM": Rule(lambda op, a, b: jnp.minimum(a, b)),
    "SQUARED_DIFFERENCE": Rule(lambda op, a, b: jnp.square(a - b)),
    "RELU": Rule(lambda op, x: jax.nn.relu(x)), "RELU6": Rule(lambda op, x: FUSED[3](x)),
    "RELU_N1_TO_1": Rule(lambda op, x: FUSED[2](x)),
    "RELU_0_TO_1": Rule(lambda op, x: jnp.clip(x, 0.0, 1.0)),
    "LOGISTIC": Rule(lambda op, x: jax.nn.sigmoid(x)), "TANH": Rule(lambda op, x: jnp.tanh(x)),
    "HARD_SWISH": Rule(lambda op, x: _hard_swish(x)), "PRELU": Rule(_prelu),
    "LEAKY_RELU": Rule(_leaky_relu), "ELU": Rule(lambda op, x: jax.nn.elu(x)),
    "GELU": Rule(lambda op, x: jax.nn.gelu(x, approximate=bool(op.options.approximate))),
    "EXP": Rule(lambda op, x: jnp.exp(x)), "SQRT": Rule(lambda op, x: jnp.sqrt(x)),
    "RSQRT": Rule(lambda op, x: jax.lax.rsqrt(x)), "ABS": Rule(lambda op, x: jnp.abs(x)),
    "NEG": Rule(lambda op, x: -x), "SQUARE": Rule(lambda op, x: jnp.square(x)),
    "SOFTMAX": Rule(_softmax), "DEQUANTIZE": Rule(_dequantize),
}

LAYOUT: Dict[str, Rule] = {
    "CONCATENATION": Rule(_concatenation), "RESHAPE": Rule(_reshape),
    "SQUEEZE": Rule(_squeeze), "TRANSPOSE": Rule(_transpose), "PAD": Rule(_pad),
    "PADV2": Rule(_pad), "MIRROR_PAD": Rule(_mirror_pad),
    "DEPTH_TO_SPACE": Rule(_depth_to_space), "SPACE_TO_DEPTH": Rule(_space_to_depth),
    "STRIDED_SLICE": Rule(_strided_slice), "SLICE": Rule(_slice), "SPLIT": Rule(_split),
    "MEAN": _reduce(mean), "SUM": _reduce_jnp(jnp.sum), "REDUCE_MAX": _reduce_jnp(jnp.max),
    "REDUCE_MIN": _reduce_jnp(jnp.min),
    "FULLY_CONNECTED": Rule(_fully_connected, {1: lambda w: np.transpose(w)}),
}


def _all_rules() -> Dict[str, Any]:
    """All tables. When ``tflite_rules_spatial`` is imported first it is still half-built
    here (it imports this module); it then adds its table itself, at its end."""
    from models import tflite_rules_spatial
    return {**ELEMENTWISE, **LAYOUT, **getattr(tflite_rules_spatial, "SPATIAL", {})}


RULES: Dict[str, Rule] = _all_rules()
