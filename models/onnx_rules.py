"""The rule table of the ONNX importer: element-wise ops, activations, matrix products,
Softmax and reductions (``RULES``), with the ``Rule`` and ``Node`` types every rule file uses.

Why a table: adding an op is one entry, and ``models.onnx_import`` can name every supported op
when a model has another. A ``Rule`` says how its inputs reach it (``layout``):

- ``elementwise``: all operands aligned for broadcasting; channels-last in, channels-last out;
- ``channels_last``: input 0 stored channels-last (convolutions, pools, resizing);
- ``onnx``: every input in the ONNX layout (Reshape, MatMul: ops whose meaning needs it);
- ``any``: the rule gets the stored values (``Tensor`` or static numpy) and maps axes itself.

``fn(node, *inputs)`` returns the output (or a tuple). With every input static (numpy), a
rule computes in numpy and its output stays static: that is how Shape/Gather/Concat chains
that only compute shapes fold away. ``static`` lists input positions whose constants are
bound as numpy (never as variables); ``kernels`` maps an input position to the layout change
applied ONCE at import to a constant weight there (conv kernels to HWIO).
"""
import dataclasses
import math
import operator
from typing import Any, Callable, Dict, FrozenSet, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from models import onnx_layout as L


@dataclasses.dataclass(frozen=True)
class Node:
    """One ONNX node, with its attributes decoded (bytes -> str, tensors -> numpy)."""
    op_type: str
    name: str
    index: int
    attrs: Dict[str, Any]
    opset: int
    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]

    def attr(self, key: str, default=None):
        return self.attrs.get(key, default)

    def where(self) -> str:
        return f"ONNX op {self.op_type} (node {self.name!r}, #{self.index})"


@dataclasses.dataclass(frozen=True)
class Rule:
    fn: Callable
    layout: str = "elementwise"
    static: FrozenSet[int] = frozenset()
    kernels: Dict[int, Callable] = dataclasses.field(default_factory=dict)


def xp(*values):
    """numpy when every value is static (the result stays a compile-time constant)."""
    return np if all(v is None or L.is_static(v) for v in values) else jnp


def static_ints(value, what: str, node: Node):
    """A compile-time integer vector (shape, axes, pads): keeps shapes static."""
    if isinstance(value, (np.ndarray, np.generic)) and (
            np.issubdtype(value.dtype, np.integer) or value.dtype == object):
        return [v if value.dtype == object else int(v) for v in np.asarray(value).reshape(-1)]
    raise NotImplementedError(f"{node.where()}: the {what} must be a constant integer tensor "
                              "(computed from constants and shapes only)")


def static_floats(value, what: str, node: Node):
    if isinstance(value, (np.ndarray, np.generic)):
        return [float(v) for v in np.asarray(value).reshape(-1)]
    raise NotImplementedError(f"{node.where()}: the {what} must be a constant tensor")


# -- element-wise -------------------------------------------------------------------------

def _div(a, b):
    """Integers divide truncating toward zero (C), not flooring as numpy's //."""
    if all(np.issubdtype(np.asarray(v).dtype if L.is_static(v) else v.dtype, np.integer)
           for v in (a, b)):
        m = xp(a, b)
        q = m.floor_divide(a, b)
        return q + ((m.remainder(a, b) != 0) & ((m.asarray(a) < 0) != (m.asarray(b) < 0)))
    return a / b


def _binary(f):
    return Rule(lambda node, a, b: f(a, b))


def _variadic(f):
    def fn(node, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = f(out, x)
        return out
    return Rule(fn)


def _unary(f):
    return Rule(lambda node, x: f(x))


def _hard_sigmoid(node, x):
    alpha, beta = node.attr("alpha", 0.2), node.attr("beta", 0.5)
    return xp(x).clip(x * alpha + beta, 0.0, 1.0)


def _hard_swish(node, x):
    return x * xp(x).clip(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)


def _clip(node, x, low=None, high=None):
    """Clip: bounds as inputs from opset 11 (either may be omitted), attributes before."""
    if node.opset < 11:
        low, high = node.attr("min"), node.attr("max")
    if low is not None and high is not None:
        return xp(x, low, high).clip(x, low, high)
    if low is not None:
        return xp(x, low).maximum(x, low)
    if high is not None:
        return xp(x, high).minimum(x, high)
    return x


def _leaky_relu(node, x):
    return jnp.where(x >= 0, x, x * node.attr("alpha", 0.01))


def _elu(node, x):
    return jax.nn.elu(x, node.attr("alpha", 1.0))


def _selu(node, x):
    alpha = node.attr("alpha", 1.67326319217681884765625)
    gamma = node.attr("gamma", 1.05070102214813232421875)
    return gamma * jnp.where(x > 0, x, alpha * (jnp.exp(x) - 1.0))


def _prelu(node, x, slope):
    return jnp.where(x >= 0, x, slope * x)


def _pow(node, a, b):
    if L.is_static(b) and np.ndim(b) == 0 and float(b) == 2.0:
        return a * a
    return xp(a, b).power(a, b)


def _mod(node, a, b):
    """Mod: ``fmod=1`` (required for floats) takes the sign of the dividend (C fmod),
    ``fmod=0`` that of the divisor (Python's %)."""
    return xp(a, b).fmod(a, b) if node.attr("fmod", 0) else a % b


def _where(node, cond, a, b):
    return xp(cond, a, b).where(cond, a, b)


def _gelu(node, x):
    return jax.nn.gelu(x, approximate=node.attr("approximate", "none") == "tanh")


ELEMENTWISE = {
    "Add": _binary(operator.add), "Sub": _binary(operator.sub),
    "Mul": _binary(operator.mul), "Div": _binary(_div),
    "Pow": Rule(_pow), "Mod": Rule(_mod),
    "Max": _variadic(lambda a, b: xp(a, b).maximum(a, b)),
    "Min": _variadic(lambda a, b: xp(a, b).minimum(a, b)),
    "Sum": _variadic(operator.add),
    "Mean": Rule(lambda node, *xs: sum(xs[1:], xs[0]) / len(xs)),
    "Equal": _binary(lambda a, b: xp(a, b).equal(a, b)),
    "Less": _binary(lambda a, b: xp(a, b).less(a, b)),
    "Greater": _binary(lambda a, b: xp(a, b).greater(a, b)),
    "LessOrEqual": _binary(lambda a, b: xp(a, b).less_equal(a, b)),
    "GreaterOrEqual": _binary(lambda a, b: xp(a, b).greater_equal(a, b)),
    "And": _binary(lambda a, b: xp(a, b).logical_and(a, b)),
    "Or": _binary(lambda a, b: xp(a, b).logical_or(a, b)),
    "Not": _unary(lambda x: xp(x).logical_not(x)),
    "Where": Rule(_where),
    "Neg": _unary(operator.neg), "Abs": _unary(lambda x: xp(x).abs(x)),
    "Sqrt": _unary(lambda x: xp(x).sqrt(x)), "Exp": _unary(lambda x: xp(x).exp(x)),
    "Log": _unary(lambda x: xp(x).log(x)), "Reciprocal": _unary(lambda x: 1.0 / x),
    "Floor": _unary(lambda x: xp(x).floor(x)), "Ceil": _unary(lambda x: xp(x).ceil(x)),
    "Round": _unary(lambda x: xp(x).round(x)), "Sign": _unary(lambda x: xp(x).sign(x)),
    "Erf": _unary(jax.lax.erf), "Tanh": _unary(jnp.tanh),
    "Relu": _unary(jax.nn.relu), "Sigmoid": _unary(jax.nn.sigmoid),
    "Softplus": _unary(jax.nn.softplus), "Gelu": Rule(_gelu),
    "HardSigmoid": Rule(_hard_sigmoid), "HardSwish": Rule(_hard_swish),
    "Clip": Rule(_clip, static=frozenset({1, 2})),
    "LeakyRelu": Rule(_leaky_relu), "Elu": Rule(_elu), "Selu": Rule(_selu),
    "PRelu": Rule(_prelu),
}


# -- matrix products ----------------------------------------------------------------------

def _gemm(node, a, b, c=None):
    """Gemm: the transposes are dot_general's contracting axes, not ops in the graph."""
    contract_a = 0 if node.attr("transA", 0) else 1
    contract_b = 1 if node.attr("transB", 0) else 0
    y = lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())))
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c if beta == 1.0 else c * beta)
    return y


MATRIX = {
    "MatMul": Rule(lambda node, a, b: jnp.matmul(a, b), layout="onnx"),
    "Gemm": Rule(_gemm, layout="onnx"),
}


# -- Softmax and reductions (axes mapped onto the stored layout) --------------------------

def _softmax_rule(f):
    def fn(node, x):
        default = -1 if node.opset >= 13 else 1
        axis = node.attr("axis", default)
        rank = x.ndim
        axis = axis + rank if axis < 0 else axis
        if node.opset >= 13 or axis == rank - 1:
            return L.wrap(f(x.array, axis=L.stored_axis(axis, rank, x.channels_last)),
                          x.channels_last)
        array = L.onnx_layout(x)                   # opset < 13: softmax over axes axis..end
        shape = array.shape
        flat = jnp.reshape(array, (*shape[:axis], math.prod(shape[axis:])))
        return L.Tensor(jnp.reshape(f(flat, axis=-1), shape))
    return Rule(fn, layout="any")


def _reduce_axes(node, x, axes_input):
    """Axes from the attribute (older opsets) or the second input (ReduceSum 13, others 18)."""
    if axes_input is not None:
        axes = static_ints(axes_input, "axes", node)
    else:
        axes = node.attr("axes")
    if axes is None or len(axes) == 0:
        if node.attr("noop_with_empty_axes", 0):
            return None
        return list(range(x.ndim))
    return [a + x.ndim if a < 0 else a for a in axes]


def window_mean(x, axes):
    """Mean over whole axes of an array, as a pooling window (exports as AveragePool)."""
    return _whole_window(x, axes, 0.0, lax.add) / float(math.prod(x.shape[a] for a in axes))


def window_max(x, axes):
    return _whole_window(x, axes, -jnp.inf, lax.max)


def _whole_window(x, axes, init, op):
    """A reduction that keeps its axes (size 1) without broadcasting: ``keepdims=True`` and
    ``expand_dims`` both become a broadcast against the symbolic batch in the exported ONNX
    (Shape, Reshape, Expand), which stops the export's transpose sinking; a window over the
    whole axes exports as a pool that the sinking moves through."""
    window = tuple(x.shape[a] if a in axes else 1 for a in range(x.ndim))
    return lax.reduce_window(x, init, op, window, (1,) * x.ndim, "VALID")


def _reduce_channels_last(f, x, axes, keep: bool, window=None):
    """Reduces the stored axes: no transpose. Without keepdims (batch kept) what is left is
    channels-last when channels and a spatial axis remain, else already in the ONNX order."""
    stored = tuple(sorted(L.stored_axis(a, x.ndim, True) for a in axes))
    if keep and window is not None and all(0 < a < x.ndim - 1 for a in stored):
        return L.Tensor(window(x.array, stored), True)
    out = f(x.array, axis=stored)
    if keep:
        return L.Tensor(jnp.expand_dims(out, stored), True)
    spatial_left = any(a not in axes for a in range(2, x.ndim))
    return L.Tensor(out, 1 not in axes and spatial_left)


def _reduce_rule(f, window=None):
    """``window``: the same reduction as a whole-axes pooling window, for spatial axes."""
    def fn(node, x, axes_input=None):
        if L.is_static(x):
            x = L.Tensor(np.asarray(x))
        axes = _reduce_axes(node, x, axes_input)
        if axes is None:
            return x
        keep = bool(node.attr("keepdims", 1))
        if x.channels_last and (keep or 0 not in axes):
            return _reduce_channels_last(f, x, axes, keep, window)
        array = L.onnx_layout(x)
        if L.is_static(array):
            return f(array, axis=tuple(axes), keepdims=keep)
        out = f(array, axis=tuple(axes))
        return L.Tensor(jnp.expand_dims(out, tuple(sorted(axes))) if keep else out)
    return Rule(fn, layout="any", static=frozenset({1}))


def _l2(x, axis, keepdims=False):
    return jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=keepdims))


REDUCTIONS = {
    "Softmax": _softmax_rule(jax.nn.softmax),
    "LogSoftmax": _softmax_rule(jax.nn.log_softmax),
    "ReduceMean": _reduce_rule(jnp.mean, window_mean), "ReduceSum": _reduce_rule(jnp.sum),
    "ReduceMax": _reduce_rule(jnp.max, window_max), "ReduceMin": _reduce_rule(jnp.min),
    "ReduceProd": _reduce_rule(jnp.prod), "ReduceL2": _reduce_rule(_l2),
}

RULES: Dict[str, Rule] = {**ELEMENTWISE, **MATRIX, **REDUCTIONS}
