"""Removing every channel of a group: whole branches vanish, their constants are folded.

When a group keeps no channel, arrays with a zero-size axis would appear. They are never
built: such a value is a ``Vanished`` placeholder (shape and dtype only), and an equation
whose results would all be empty is skipped. Where an empty array meets a non-empty
result, the primitive says what is left (``VANISH_RULES``): a contraction over zero
channels is zeros, a reduction over nothing is its identity, a concatenation drops the
piece. Those results do not depend on the input at all, only on parameters downstream
(a bias, a BatchNorm shift, an activation of them), so they are kept as ``Bcast``: a small
array with size-1 axes standing for its broadcast to the full shape. Elementwise ops,
broadcasts, transposes, reductions and the free axes of a dot compute on the small array
(``FOLD_RULES``), so a residual block whose inner channels are all removed becomes
``x + c`` with ``c`` a per-channel constant, and an SE gate with no squeeze channels
becomes a constant per-channel scale. Anything else materializes the broadcast.

What was computed only for a removed branch is left unused and removed by dead-code
elimination in ``pruning.prune``.
"""
import dataclasses
from typing import Callable, Dict, List, Optional

import jax.numpy as jnp
import numpy as np
from jax import lax

from jax.extend.core import Primitive

from core import primitives as P
from pruning.shape_rules import Rebind

Rule = Callable[[Rebind], Optional[list]]


@dataclasses.dataclass(eq=False)
class Vanished:
    """An array with no elements: all channels of a group on one of its axes are gone."""
    shape: tuple
    dtype: object


@dataclasses.dataclass(eq=False)
class Bcast:
    """``broadcast_to(small, shape)`` with ``small`` of the same rank (size-1 where it is
    constant); materialized only where an op needs the full array."""
    small: object
    shape: tuple
    _full: object = None

    @property
    def dtype(self):
        return self.small.dtype

    def materialize(self):
        if self._full is None:
            self._full = lax.broadcast_in_dim(self.small, self.shape,
                                              tuple(range(len(self.shape))))
        return self._full


def is_empty(shape) -> bool:
    return any(isinstance(n, (int, np.integer)) and n == 0 for n in shape)


def wrap(value, shape):
    """``value`` as the result of shape ``shape``: itself when full, else a ``Bcast``."""
    if tuple(np.shape(value)) == tuple(shape):
        return value
    return Bcast(value, tuple(shape))


def materialize(value):
    if isinstance(value, Bcast):
        return value.materialize()
    if isinstance(value, Vanished):
        return jnp.zeros(value.shape, value.dtype)
    return value


def small_of(value):
    return value.small if isinstance(value, Bcast) else value


# ------------------------------------------------------------------ vanishing
def _constant(ctx: Rebind, fill) -> list:
    dtype = ctx.eqn.outvars[0].aval.dtype
    shape = ctx.out_shape(0)
    return [Bcast(jnp.full((1,) * len(shape), fill, dtype), shape)]


def _empty_contraction(ctx: Rebind) -> Optional[list]:
    """A contraction with an empty contracted axis is zeros (other empty axes would have
    emptied the result, which is handled before)."""
    return _constant(ctx, 0)


def _empty_concatenate(ctx: Rebind) -> Optional[list]:
    rest = [v for v in ctx.invals if not isinstance(v, Vanished)]
    if len(rest) == 1:
        return [rest[0]]
    return ctx.bind([materialize(v) for v in rest])


def _empty_reduction(identity) -> Rule:
    """A reduction over nothing is its identity."""
    return lambda ctx: _constant(ctx, identity)


VANISH_RULES: Dict[Primitive, Rule] = P.rule_table({
    P.LINEAR: _empty_contraction,
    P.concatenate_p: _empty_concatenate,
    P.reduce_sum_p: _empty_reduction(0),
    P.reduce_max_p: _empty_reduction(-np.inf),
    P.reduce_min_p: _empty_reduction(np.inf),
    P.reduce_prod_p: _empty_reduction(1),
})


# -------------------------------------------------------------------- folding
def _fold_elementwise(ctx: Rebind) -> Optional[list]:
    try:
        outs = ctx.bind([small_of(v) for v in ctx.invals])
    except (TypeError, ValueError):
        return None          # operands that do not broadcast: materialize instead
    return [wrap(out, ctx.out_shape(k)) for k, out in enumerate(outs)]


def _fold_broadcast_in_dim(ctx: Rebind) -> Optional[list]:
    value = ctx.invals[0]
    shape = ctx.out_shape(0)
    dims = ctx.eqn.params["broadcast_dimensions"]
    small_shape = [1] * len(shape)
    for i, d in enumerate(dims):
        small_shape[d] = value.small.shape[i]
    small = lax.broadcast_in_dim(value.small, tuple(small_shape), dims)
    return [wrap(small, shape)]


def _fold_reshape(ctx: Rebind) -> Optional[list]:
    value = ctx.invals[0]
    if any(n != 1 for n in value.small.shape):
        return None
    shape = ctx.out_shape(0)
    return [wrap(jnp.reshape(value.small, (1,) * len(shape)), shape)]


def _fold_transpose(ctx: Rebind) -> Optional[list]:
    perm = ctx.eqn.params["permutation"]
    return [wrap(jnp.transpose(ctx.invals[0].small, perm), ctx.out_shape(0))]


def _fold_reduction(ctx: Rebind, sums: bool) -> Optional[list]:
    """Reduces the small array; a sum over a broadcast (size-1) axis is the value times the
    axis length (``sums``), a max or min of it is the value."""
    value = ctx.invals[0]
    axes = tuple(ctx.eqn.params["axes"])
    factor = 1
    for d in axes:
        full = value.shape[d]
        if value.small.shape[d] == 1 and sums:
            if not isinstance(full, (int, np.integer)):
                return None
            factor *= int(full)
    small = ctx.bind([value.small], axes=axes)[0]
    if factor != 1:
        small = small * np.asarray(factor, small.dtype)
    shape = ctx.out_shape(0)
    kept = [d for d in range(len(value.shape)) if d not in axes]
    small = jnp.reshape(small, tuple(value.small.shape[d] for d in kept))
    return [wrap(small, shape)]


def _fold_dot_general(ctx: Rebind) -> Optional[list]:
    """A broadcast operand whose constant axes are all free axes: the dot of its small array
    has size 1 on those result axes."""
    (lc, rc), (lb, rb) = ctx.eqn.params["dimension_numbers"]
    for value, busy in zip(ctx.invals, (set(lc) | set(lb), set(rc) | set(rb))):
        if isinstance(value, Bcast):
            for d, (s, n) in enumerate(zip(value.small.shape, value.shape)):
                if s != n and d in busy:
                    return None
    out = ctx.bind([small_of(v) for v in ctx.invals])[0]
    return [wrap(out, ctx.out_shape(0))]


FOLD_RULES: Dict[Primitive, Rule] = P.rule_table({
    P.ELEMENTWISE: _fold_elementwise,
    P.broadcast_in_dim_p: _fold_broadcast_in_dim,
    P.reshape_p: _fold_reshape,
    P.transpose_p: _fold_transpose,
    P.reduce_sum_p: lambda ctx: _fold_reduction(ctx, sums=True),
    (P.reduce_max_p, P.reduce_min_p): lambda ctx: _fold_reduction(ctx, sums=False),
    P.dot_general_p: _fold_dot_general,
})


def fold(ctx: Rebind) -> Optional[list]:
    """Results of an equation with ``Bcast`` operands, or ``None`` to materialize them."""
    rule = FOLD_RULES.get(ctx.eqn.primitive)
    return rule(ctx) if rule is not None else None


def vanish(ctx: Rebind) -> Optional[list]:
    """Results of an equation with empty operands but non-empty results, or ``None``."""
    rule = VANISH_RULES.get(ctx.eqn.primitive)
    return rule(ctx) if rule is not None else None


def results_vanish(shapes: List[tuple]) -> bool:
    return bool(shapes) and all(is_empty(s) for s in shapes)
