"""Channels-last inside an ONNX graph: values that remember their layout.

Why: ONNX image models are NCHW, but a JAX model runs its convolutions, pools and resizes
channels-last (NHWC), and the exported ONNX of an NHWC JAX graph needs no Transposes only
when the whole graph stays NHWC. So every rank >= 3 activation that a spatial op produces is
stored channels-last (ONNX axes (N, C, *S) stored as (N, *S, C)), and is brought back to the
ONNX layout only where an op's meaning depends on it (Reshape, MatMul, a graph output). Ops
that only need an axis (Concat, Slice, reductions, Softmax) map it instead. A layout move
that only shifts axes of size 1 is a reshape, not a transpose (an SE gate, a 1-channel map).

Static values (integer shapes, axes, folded constants) are numpy arrays in the ONNX layout;
dynamic values are ``Tensor``s.
"""
import dataclasses
from typing import Any, List, Sequence, Tuple

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A dynamic value; ``channels_last`` means ONNX axes (N, C, *S) are stored (N, *S, C)."""
    array: Any
    channels_last: bool = False

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def onnx_shape(self) -> Tuple:
        shape = tuple(self.array.shape)
        return (shape[0], shape[-1], *shape[1:-1]) if self.channels_last else shape


def is_static(value) -> bool:
    return isinstance(value, (np.ndarray, np.generic, int, float))


def to_channels_last_perm(rank: int) -> Tuple[int, ...]:
    return (0, *range(2, rank), 1)


def to_onnx_perm(rank: int) -> Tuple[int, ...]:
    return (0, rank - 1, *range(1, rank - 1))


def move(array, perm: Sequence[int]):
    """``transpose(array, perm)``; a reshape when only axes of size 1 change place."""
    perm = tuple(perm)
    if perm == tuple(range(len(perm))):
        return array
    xp = np if is_static(array) else jnp
    shape = tuple(array.shape)
    if _keeps_order(shape, perm):
        return xp.reshape(array, tuple(shape[p] for p in perm))
    return xp.transpose(array, perm)


def _is_one(d) -> bool:
    return isinstance(d, (int, np.integer)) and d == 1


def _keeps_order(shape, perm) -> bool:
    """True when the axes of size other than 1 keep their relative order under ``perm``."""
    order = [p for p in perm if not _is_one(shape[p])]
    return order == sorted(order)


def channels_last(value):
    """The value's array stored channels-last (rank >= 3), else as it is."""
    if isinstance(value, Tensor):
        if value.channels_last or value.ndim < 3:
            return value.array
        return move(value.array, to_channels_last_perm(value.ndim))
    if value is None or np.ndim(value) < 3:
        return value
    return move(np.asarray(value), to_channels_last_perm(np.ndim(value)))


def onnx_layout(value):
    """The value's array in the ONNX layout."""
    if isinstance(value, Tensor):
        if not value.channels_last:
            return value.array
        return move(value.array, to_onnx_perm(value.ndim))
    return value


def wrap(array, channels_last_: bool):
    """A rule's result as a stored value: numpy stays static, rank < 3 is never channels-last."""
    if is_static(array):
        return np.asarray(array)
    return Tensor(array, bool(channels_last_) and array.ndim >= 3)


def stored_axis(axis: int, rank: int, channels_last_: bool) -> int:
    """Where ONNX axis ``axis`` of a rank-``rank`` value is stored."""
    axis = axis + rank if axis < 0 else axis
    if not channels_last_ or rank < 3:
        return axis
    return to_onnx_perm(rank)[axis]


def align(values: Sequence[Any]) -> Tuple[List[Any], bool]:
    """Arrays of element-wise operands, broadcastable against each other, and whether the
    result is channels-last: when some operand is channels-last, the others (ONNX
    broadcasting aligns trailing axes) are expanded to its rank and stored channels-last."""
    layouts = [v for v in values if isinstance(v, Tensor) and v.channels_last]
    if not layouts:
        return [onnx_layout(v) for v in values], False
    rank = layouts[0].ndim
    if any(np.ndim(_array(v)) > rank for v in values if v is not None) or any(
            t.ndim != rank for t in layouts):
        return [onnx_layout(v) for v in values], False
    return [_to_rank_channels_last(v, rank) for v in values], True


def _array(value):
    return value.array if isinstance(value, Tensor) else value


def _to_rank_channels_last(value, rank: int):
    if value is None:
        return None
    if isinstance(value, Tensor) and value.channels_last:
        return value.array
    array = _array(value)
    if np.ndim(array) == 0 or np.size(array) == 1 and is_static(array):
        return array if np.ndim(array) == 0 else np.reshape(array, ())
    xp = np if is_static(array) else jnp
    shape = tuple(array.shape)
    array = xp.reshape(array, (1,) * (rank - len(shape)) + shape)
    return move(array, to_channels_last_perm(rank))
