"""How to re-bind a primitive when some of its channel axes got narrower.

Most primitives need nothing: an elementwise op, a contraction, a transpose or a reduction
binds on narrower operands and gives narrower results. A few carry shapes or positions in
their parameters, and those are rewritten here, one rule per primitive (``RULES``):
``reshape`` and ``broadcast_in_dim`` (the result shape), ``conv_general_dilated`` (the
number of feature groups of a depthwise or grouped conv), ``split`` (piece sizes),
``slice`` (offsets into a fused qkv, strided halves), ``pad``, ``dynamic_slice`` and
``gather`` (window sizes). A primitive without a rule whose operands did not change but
whose result holds pruned channels (``iota``, random bits, constants) is evaluated at full
size and its kept positions are taken.

The new shape of every result comes from the plan (``pruning.plan``): the kept count on a
channel axis, the traced size (possibly symbolic, e.g. the batch) elsewhere.
"""
from typing import Callable, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive

from core import primitives as P
from core.rewrite import bind_equation
from core.trace import source_line
from pruning.plan import AxisSpec, EquationPlan


class PruneError(RuntimeError):
    """An equation cannot be re-bound with the requested channels."""


def select_positions(x, positions: np.ndarray, axis: int):
    """``x`` restricted to ``positions`` along ``axis``: a slice when they are contiguous."""
    positions = np.asarray(positions, np.int64)
    if not isinstance(x, jax.core.Tracer):
        return np.take(np.asarray(x), positions, axis=axis)
    if len(positions) and np.all(np.diff(positions) == 1):
        return lax.slice_in_dim(x, int(positions[0]), int(positions[-1]) + 1, axis=axis)
    return jnp.take(x, jnp.asarray(positions), axis=axis)


class Rebind:
    """One equation being re-bound: its (narrowed) operands and what its results become."""

    def __init__(self, eqn, invals: List, plan: EquationPlan,
                 kept: Callable[[AxisSpec], Optional[np.ndarray]]):
        self.eqn = eqn
        self.invals = invals
        self.plan = plan
        self._kept = kept

    def _kept_on(self, specs, d) -> Optional[np.ndarray]:
        if specs is None or specs[d] is None:
            return None
        return self._kept(specs[d])

    def in_kept(self, i: int, d: int) -> Optional[np.ndarray]:
        return self._kept_on(self.plan.ins[i], d)

    def out_kept(self, k: int, d: int) -> Optional[np.ndarray]:
        return self._kept_on(self.plan.outs[k], d)

    def out_shape(self, k: int) -> tuple:
        shape = tuple(self.eqn.outvars[k].aval.shape)
        return tuple(len(kept) if (kept := self.out_kept(k, d)) is not None else n
                     for d, n in enumerate(shape))

    def in_size(self, i: int, d: int) -> int:
        """Size of operand ``i``'s axis ``d`` in the unpruned model."""
        specs = self.plan.ins[i]
        if specs is not None and specs[d] is not None:
            return specs[d].size
        return self.eqn.invars[i].aval.shape[d]

    def changed(self) -> bool:
        specs = list(self.plan.ins) + list(self.plan.outs)
        return any(s is not None and any(a is not None and self._kept(a) is not None for a in s)
                   for s in specs)

    def bind(self, invals=None, **params) -> list:
        eqn = self.eqn.replace(params=dict(self.eqn.params, **params)) if params else self.eqn
        return bind_equation(eqn, self.invals if invals is None else invals)

    def error(self, message: str) -> PruneError:
        return PruneError(f"{self.eqn.primitive.name} at {source_line(self.eqn)}: {message}")


def reshape(ctx: Rebind) -> list:
    return ctx.bind(new_sizes=ctx.out_shape(0), dimensions=None)


def broadcast_in_dim(ctx: Rebind) -> list:
    return ctx.bind(shape=ctx.out_shape(0))


def conv(ctx: Rebind) -> list:
    groups = ctx.eqn.params["feature_group_count"]
    if groups == 1:
        return ctx.bind()
    lhs_spec, rhs_spec, _ = ctx.eqn.params["dimension_numbers"]
    features = ctx.invals[0].shape[lhs_spec[1]]
    per_group = ctx.invals[1].shape[rhs_spec[1]]
    if features % per_group:
        raise ctx.error(f"{features} input features do not split into groups of {per_group}")
    return ctx.bind(feature_group_count=features // per_group)


def split(ctx: Rebind) -> list:
    axis = ctx.eqn.params["axis"]
    return ctx.bind(sizes=tuple(ctx.out_shape(k)[axis] for k in range(len(ctx.eqn.outvars))))


def slice_(ctx: Rebind) -> list:
    """Each kept result position reads input position ``start + j * stride``; find it among
    the kept input positions. A regular progression stays a slice, otherwise a take."""
    p = ctx.eqn.params
    rank = len(p["start_indices"])
    starts, limits = list(p["start_indices"]), list(p["limit_indices"])
    strides = list(p["strides"] or (1,) * rank)
    takes = []
    for d in range(rank):
        ik, ok = ctx.in_kept(0, d), ctx.out_kept(0, d)
        if ik is None and ok is None:
            continue
        n_in = ctx.in_size(0, d)
        n_out = len(range(starts[d], limits[d], strides[d]))
        out_pos = ok if ok is not None else np.arange(n_out)
        in_pos = ik if ik is not None else np.arange(n_in)
        wanted = starts[d] + out_pos * strides[d]
        idx = np.searchsorted(in_pos, wanted)
        if np.any(idx >= len(in_pos)) or np.any(in_pos[np.minimum(idx, len(in_pos) - 1)]
                                                 != wanted):
            raise ctx.error(f"axis {d}: the slice reads channels that were removed")
        step = int(idx[1] - idx[0]) if len(idx) > 1 else 1
        if len(idx) and step >= 1 and np.all(np.diff(idx) == step):
            starts[d], limits[d], strides[d] = int(idx[0]), int(idx[-1]) + 1, step
        else:
            starts[d], limits[d], strides[d] = 0, len(in_pos), 1
            takes.append((d, idx))
    (out,) = ctx.bind(start_indices=tuple(starts), limit_indices=tuple(limits),
                      strides=tuple(strides))
    for d, idx in takes:
        out = select_positions(out, idx, d)
    return [out]


def pad(ctx: Rebind) -> list:
    config = list(ctx.eqn.params["padding_config"])
    for d, (lo, hi, interior) in enumerate(config):
        ik, ok = ctx.in_kept(0, d), ctx.out_kept(0, d)
        if ik is None and ok is None:
            continue
        if interior:
            raise ctx.error("interior padding of a pruned axis")
        n_in = ctx.in_size(0, d)
        in_pos = ik if ik is not None else np.arange(n_in)
        out_pos = ok if ok is not None else np.arange(n_in + lo + hi)
        new_lo = int(np.sum(out_pos < lo)) if lo >= 0 else -int(np.sum(in_pos < -lo))
        new_hi = (int(np.sum(out_pos >= n_in + lo)) if hi >= 0
                  else -int(np.sum(in_pos >= n_in + hi)))
        config[d] = (new_lo, new_hi, 0)
    return ctx.bind(padding_config=tuple(config))


def _window_sizes(ctx: Rebind, sizes) -> tuple:
    """Full-size windows over a pruned axis follow it; partial windows are fixed axes."""
    sizes = list(sizes)
    for d, n in enumerate(sizes):
        kept = ctx.in_kept(0, d)
        if kept is not None and n == ctx.in_size(0, d):
            sizes[d] = len(kept)
    return tuple(sizes)


def dynamic_slice(ctx: Rebind) -> list:
    return ctx.bind(slice_sizes=_window_sizes(ctx, ctx.eqn.params["slice_sizes"]))


def gather(ctx: Rebind) -> list:
    return ctx.bind(slice_sizes=_window_sizes(ctx, ctx.eqn.params["slice_sizes"]))


# Primitives whose parameters hold shapes or positions (see the module docstring).
RULES: Dict[Primitive, Callable[[Rebind], list]] = P.rule_table({
    P.reshape_p: reshape,
    P.broadcast_in_dim_p: broadcast_in_dim,
    P.conv_general_dilated_p: conv,
    P.split_p: split,
    P.slice_p: slice_,
    P.pad_p: pad,
    P.dynamic_slice_p: dynamic_slice,
    P.gather_p: gather,
})


def generic(ctx: Rebind) -> list:
    """Bind as is; a result still at full size on a pruned axis (its operands did not carry
    the channels: ``iota``, constants) gets its kept positions taken."""
    outs = ctx.bind()
    fixed = []
    for k, out in enumerate(outs):
        want = ctx.out_shape(k)
        have = tuple(np.shape(out))
        if have != want:
            for d in range(len(want)):
                kept = ctx.out_kept(k, d)
                if kept is not None and have[d] != want[d]:
                    if have[d] != ctx.plan.outs[k][d].size:
                        raise ctx.error(f"result axis {d} has {have[d]} positions, expected "
                                        f"{want[d]}; no rule to re-bind this primitive")
                    out = select_positions(out, kept, d)
        fixed.append(out)
    return fixed


def rebind(ctx: Rebind) -> list:
    return RULES.get(ctx.eqn.primitive, generic)(ctx)
