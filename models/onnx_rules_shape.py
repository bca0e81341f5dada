"""The importer's rules for ops that move data or compute shapes (``RULES``).

Why separate: these are the ops whose inputs are often all static (a Shape -> Gather ->
Concat -> Reshape chain that flattens a feature map); they compute in numpy then and fold
away, so integer shape values stay static and the JAX graph holds only the final reshape.
A dynamic channels-last input keeps its layout where the op only needs an axis (Concat,
Split, Slice, Pad) and is brought to the ONNX layout where the op's meaning needs it.
"""
import math
from typing import Dict, List

import jax.numpy as jnp
import numpy as np
from jax import lax

from models import onnx_layout as L
from models.onnx_rules import Rule, static_ints, xp

# ONNX TensorProto data types -> numpy
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
          7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32,
          13: np.uint64}


def _shape(node, x):
    dims = list(x.onnx_shape) if isinstance(x, L.Tensor) else list(np.shape(x))
    dims = dims[node.attr("start", 0):node.attr("end", None)]
    if all(isinstance(d, (int, np.integer)) for d in dims):
        return np.asarray(dims, np.int64)
    return np.asarray(dims, object)              # symbolic dimensions (jax.export)


def _cast(node, x):
    dtype = DTYPES[node.attr("to")]
    if isinstance(x, L.Tensor):
        return L.Tensor(x.array.astype(dtype), x.channels_last)
    x = np.asarray(x)
    if x.dtype == object and np.issubdtype(dtype, np.integer):
        return x                                  # symbolic dimensions stay as they are
    return x.astype(dtype)


def _reshape(node, x, shape):
    dims = static_ints(shape, "shape", node)
    if not node.attr("allowzero", 0):
        dims = [x.shape[i] if _is_zero(d) else d for i, d in enumerate(dims)]
    return xp(x).reshape(x, tuple(dims))


def _is_zero(d) -> bool:
    return isinstance(d, (int, np.integer)) and d == 0


def _flatten(node, x):
    axis = node.attr("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    shape = x.shape
    return xp(x).reshape(x, (math.prod(shape[:axis]), math.prod(shape[axis:])))


def _transpose(node, x):
    perm = node.attr("perm") or list(range(x.ndim))[::-1]
    if isinstance(x, L.Tensor) and x.channels_last:
        to_onnx = L.to_onnx_perm(x.ndim)
        return L.Tensor(L.move(x.array, [to_onnx[p] for p in perm]))
    array = L.onnx_layout(x)
    return L.wrap(L.move(array, perm), False)


def _concat(node, *xs):
    xs = [x for x in xs if x is not None]
    axis = node.attr("axis")
    if all(L.is_static(x) for x in xs):
        return np.concatenate([np.asarray(x) for x in xs], axis=axis)
    if all(isinstance(x, L.Tensor) and x.channels_last or L.is_static(x) for x in xs):
        rank = xs[0].ndim
        arrays = [L.channels_last(x) for x in xs]
        return L.Tensor(jnp.concatenate(arrays, axis=L.stored_axis(axis, rank, True)), True)
    return L.Tensor(jnp.concatenate([L.onnx_layout(x) for x in xs], axis=axis))


def _split(node, x, split=None):
    axis = node.attr("axis", 0)
    rank = x.ndim
    axis = axis + rank if axis < 0 else axis
    size = (x.onnx_shape if isinstance(x, L.Tensor) else np.shape(x))[axis]
    sizes = static_ints(split, "split", node) if split is not None else node.attr("split")
    if not sizes:
        n = node.attr("num_outputs", len(node.outputs))
        sizes = [-(-size // n)] * (n - 1)
        sizes.append(size - sum(sizes))
    channels_last = isinstance(x, L.Tensor) and x.channels_last
    array = x.array if isinstance(x, L.Tensor) else np.asarray(x)
    stored = L.stored_axis(axis, rank, channels_last)
    outs, start = [], 0
    for s in sizes:
        index = [slice(None)] * rank
        index[stored] = slice(start, start + s)
        outs.append(L.wrap(array[tuple(index)], channels_last))
        start += s
    return tuple(outs)


def _slice(node, x, starts=None, ends=None, axes=None, steps=None):
    """Slice with static bounds (inputs from opset 10, attributes before), axes mapped."""
    if node.opset < 10:
        starts, ends, axes = node.attr("starts"), node.attr("ends"), node.attr("axes")
    else:
        starts, ends = static_ints(starts, "starts", node), static_ints(ends, "ends", node)
        axes = static_ints(axes, "axes", node) if axes is not None else None
        steps = static_ints(steps, "steps", node) if steps is not None else None
    rank = x.ndim
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    channels_last = isinstance(x, L.Tensor) and x.channels_last
    array = x.array if isinstance(x, L.Tensor) else np.asarray(x)
    index = [slice(None)] * rank
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis + rank if axis < 0 else axis
        index[L.stored_axis(axis, rank, channels_last)] = slice(
            _clamp(start, step), _clamp(end, step), step)
    return L.wrap(array[tuple(index)], channels_last)


def _clamp(bound, step):
    """ONNX's huge sentinel bounds (INT64_MAX/MIN) as Python slice bounds."""
    return None if abs(bound) >= 2 ** 62 else bound


def _gather(node, data, indices):
    axis = node.attr("axis", 0)
    if L.is_static(data) and L.is_static(indices):
        return np.take(np.asarray(data), np.asarray(indices), axis=axis)
    if not L.is_static(indices):
        return jnp.take(data, indices, axis=axis)
    indices = np.asarray(indices)
    axis = axis + data.ndim if axis < 0 else axis
    if indices.ndim == 0:                          # one index: a static slice, no gather
        index = [slice(None)] * data.ndim
        index[axis] = int(indices)
        return data[tuple(index)]
    return jnp.take(data, indices, axis=axis)


def _axes(node, axes_input, what):
    if node.opset >= 13:
        return static_ints(axes_input, what, node) if axes_input is not None else None
    return node.attr("axes")


def _unsqueeze(node, x, axes_input=None):
    axes = _axes(node, axes_input, "axes")
    rank = x.ndim + len(axes)
    shape: List = list(x.shape)
    for a in sorted(a + rank if a < 0 else a for a in axes):
        shape.insert(a, 1)
    return xp(x).reshape(x, tuple(shape))


def _squeeze(node, x, axes_input=None):
    axes = _axes(node, axes_input, "axes")
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if isinstance(d, (int, np.integer)) and d == 1]
    axes = {a + x.ndim if a < 0 else a for a in axes}
    return xp(x).reshape(x, tuple(d for i, d in enumerate(x.shape) if i not in axes))


def _constant_of_shape(node, shape):
    value = node.attr("value")
    value = np.zeros((1,), np.float32) if value is None else np.asarray(value)
    return np.full(tuple(static_ints(shape, "shape", node)), value.reshape(-1)[0], value.dtype)


def _range(node, start, limit, delta):
    return np.arange(np.asarray(start), np.asarray(limit), np.asarray(delta))


def _expand(node, x, shape):
    dims = static_ints(shape, "shape", node)
    target = np.broadcast_shapes(tuple(x.shape), tuple(dims)) if all(
        isinstance(d, (int, np.integer)) for d in (*x.shape, *dims)) else tuple(dims)
    return xp(x).broadcast_to(x, target)


def _tile(node, x, repeats):
    return xp(x).tile(x, tuple(static_ints(repeats, "repeats", node)))


def _pad(node, x, pads=None, value=None, axes=None):
    """Pad (constant, reflect, edge); pads as an input from opset 11, mapped axes."""
    pads = node.attr("pads") if node.opset < 11 else static_ints(pads, "pads", node)
    fill = node.attr("value", 0.0) if node.opset < 11 else (
        0.0 if value is None else float(np.asarray(value).reshape(-1)[0]))
    rank = x.ndim
    axes = list(range(rank)) if axes is None else [
        a + rank if a < 0 else a for a in static_ints(axes, "axes", node)]
    channels_last = isinstance(x, L.Tensor) and x.channels_last
    array = x.array if isinstance(x, L.Tensor) else np.asarray(x)
    widths = [(0, 0)] * rank
    n = len(axes)
    for i, axis in enumerate(axes):
        widths[L.stored_axis(axis, rank, channels_last)] = (pads[i], pads[i + n])
    array, widths = _crop(array, widths)
    mode = node.attr("mode", "constant")
    module = np if L.is_static(array) else jnp
    if mode == "constant":
        return L.wrap(module.pad(array, widths, constant_values=fill), channels_last)
    return L.wrap(module.pad(array, widths, mode={"reflect": "reflect", "edge": "edge"}[mode]),
                  channels_last)


def _crop(array, widths):
    """Negative pads remove elements (a slice); the positive rest is padded."""
    if all(b >= 0 and a >= 0 for b, a in widths):
        return array, widths
    index = tuple(slice(max(-b, 0), size - max(-a, 0))
                  for (b, a), size in zip(widths, array.shape))
    return array[index], [(max(b, 0), max(a, 0)) for b, a in widths]


def _identity(node, x, *rest):
    return x


RULES: Dict[str, Rule] = {
    "Shape": Rule(_shape, layout="any"),
    "Size": Rule(lambda node, x: np.asarray(math.prod(
        x.onnx_shape if isinstance(x, L.Tensor) else np.shape(x)), np.int64), layout="any"),
    "Cast": Rule(_cast, layout="any"),
    "Reshape": Rule(_reshape, layout="onnx", static=frozenset({1})),
    "Flatten": Rule(_flatten, layout="onnx"),
    "Transpose": Rule(_transpose, layout="any"),
    "Concat": Rule(_concat, layout="any"),
    "Split": Rule(_split, layout="any", static=frozenset({1})),
    "Slice": Rule(_slice, layout="any", static=frozenset({1, 2, 3, 4})),
    "Gather": Rule(_gather, layout="onnx", static=frozenset({1})),
    "Unsqueeze": Rule(_unsqueeze, layout="onnx", static=frozenset({1})),
    "Squeeze": Rule(_squeeze, layout="onnx", static=frozenset({1})),
    "ConstantOfShape": Rule(_constant_of_shape, layout="onnx", static=frozenset({0})),
    "Range": Rule(_range, layout="onnx", static=frozenset({0, 1, 2})),
    "Expand": Rule(_expand, layout="onnx", static=frozenset({1})),
    "Tile": Rule(_tile, layout="onnx", static=frozenset({1})),
    "Pad": Rule(_pad, layout="any", static=frozenset({1, 2, 3})),
    "Identity": Rule(_identity, layout="any"),
    "Dropout": Rule(_identity, layout="any", static=frozenset({1, 2})),
}
