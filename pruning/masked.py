"""The masked model: every channel group scaled by an explicit, differentiable mask.

``masked(fn, groups)`` returns ``g(variables, masks, *inputs)`` where ``masks`` is a plain
pytree ``{group_id: vector of the group's size}`` (values in [0, 1]); learned gates, soft
importance scores and hard 0/1 keep-sets all go through it, and gradients flow to the masks.

A channel is masked where it *meets other channels*: on the contracted axis of every
``dot_general`` and the input features of every conv, and on every reduction over a masked
axis. Elementwise work on a channel never mixes it with another, so this is the same as
gating the channel right after its last channel-wise op (after BatchNorm and the
activation), without ever scaling a BatchNorm shift or a bias into a wrong place. Means over
a masked axis divide by the sum of the masks there (``pruning.counts``), so LayerNorm,
RMSNorm and GroupNorm normalize over the kept channels. With 0/1 masks the result equals the
physically pruned model (``pruning.prune``): the exactness invariant.

A mask of exactly 0 selects rather than multiplies: a NaN or inf in a removed channel
cannot reach the output (the pruned model has no such channel), while its gradient with
respect to the mask is still the channel's value. Loop and branch bodies (``cond``,
``scan``, ``while``) are masked like the rest, and a ``custom_jvp``/``custom_vjp`` function
(a straight-through estimator) keeps its derivative rule unless masked channels meet
inside it (then it is differentiated as rewritten, with a ``CustomRuleDroppedWarning``).
"""
import copy
import functools
import warnings
from typing import Any, Callable, Dict, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from core import primitives as P
from core.channel_groups import ChannelGroup, GroupAnalysis
from core.rewrite import (CONTROL_FLOW, CUSTOM_RULES, bind_equation, evaluate,
                          rebind_control_flow)
from core.trace import call_jaxpr, source_line
from pruning import keep_sets
from pruning.counts import ReductionCounts
from pruning.groups import analysis_of
from pruning.keep_sets import kept_indices
from pruning.plan import AxisSpec, Plan, aval_key, body_changes, retrace, spec_tree

class CustomRuleDroppedWarning(UserWarning):
    """A custom_jvp/custom_vjp body in which masked or pruned channels meet each other: its
    rule describes the full-width function, so derivatives come from the rewritten body."""


def _along(pm, rank: int, axis: int):
    shape = [1] * rank
    shape[axis] = pm.shape[0]
    return jnp.reshape(pm, shape)


def finite_where_removed(x, pm):
    """``x`` with NaN and inf replaced by 0 where ``pm`` is exactly 0 (no scaling): what a
    removed channel holds must not reach the kept ones, as in the pruned model, where it
    does not exist. The other operand of a contraction whose first one :func:`gate` scales."""
    return jnp.where((pm != 0) | jnp.isfinite(x), x, jnp.zeros_like(x))


def gate(x, pm):
    """``x * pm``, except that where ``pm`` is exactly 0 the result is exactly 0 even when
    ``x`` is NaN or inf there (0 * NaN would be NaN). ``d/d pm`` stays ``x`` wherever ``x``
    is finite, so gates behind hard 0/1 masks (``pruning.gates``: a channel that is off now
    must be able to come back) still learn; soft masks in (0, 1) simply scale."""
    pm = pm.astype(jnp.result_type(x))
    if not jnp.issubdtype(pm.dtype, jnp.inexact):
        return jnp.where(pm != 0, x * pm, jnp.zeros_like(x))
    return _gate(x, pm)


@jax.custom_jvp
def _gate(x, pm):
    """A custom rule, so that only the derivative sanitizes ``x``: doing it in the forward
    pass too cost a quarter of a masked ResNet-20's training step on the CPU."""
    return jnp.where(pm != 0, x * pm, jnp.zeros_like(x))


@_gate.defjvp
def _gate_jvp(primals, tangents):
    x, pm = primals
    tx, tpm = tangents
    zero = jnp.zeros_like(x)
    finite_x = jnp.where(jnp.isfinite(x), x, zero)
    return (jnp.where(pm != 0, x * pm, zero),
            jnp.where(pm != 0, tx * pm, zero) + finite_x * tpm)


def warn_rule_dropped(eqn) -> None:
    warnings.warn(
        f"{eqn.primitive.name} at {source_line(eqn)}: channels being removed meet each other "
        f"inside this custom-derivative function, so its rule (written for the full width) "
        f"is not kept; derivatives come from the rewritten body", CustomRuleDroppedWarning,
        stacklevel=3)


class MaskHook:
    """Applies ``masks`` during one evaluation of the model's jaxpr."""

    def __init__(self, plan: Plan, masks: Dict[int, Any]):
        self.plan = plan
        self.masks = masks
        self.counts = ReductionCounts()
        self._pm: Dict[int, Any] = {}

    def position_mask(self, specs, d):
        spec: AxisSpec = specs[d] if specs is not None else None
        if spec is None:
            return None
        key = id(spec)
        if key not in self._pm:
            self._pm[key] = spec.position_mask(self.masks)
        return self._pm[key]

    def body_hook(self) -> "MaskHook":
        """For a loop or branch body traced on its own: position masks computed in there
        are values of that trace and must not be cached for the code outside."""
        child = copy.copy(self)
        child._pm = dict(self._pm)
        return child

    def _apply(self, how, x, specs, axis):
        pm = self.position_mask(specs, axis)
        if pm is None:
            return x
        return how(x, _along(pm, jnp.ndim(x), axis))

    def _changed(self, spec: AxisSpec) -> bool:
        return any(gid in self.masks for gid, _, _ in spec.owners)

    def _bind(self, eqn, invals):
        outs = bind_equation(eqn, invals)
        self.counts.follow(eqn, invals, outs)
        return outs

    def _contraction(self, eqn, invals, plan):
        """Scale one operand of a dot/conv on its contracted axes and keep NaN and inf of
        removed channels out of the other, so neither side's removed channels reach the
        result."""
        if eqn.primitive is P.dot_general_p:
            (lc, rc), _ = eqn.params["dimension_numbers"]
        else:
            lhs_spec, rhs_spec, _ = eqn.params["dimension_numbers"]
            lc, rc = (lhs_spec[1],), (rhs_spec[1],)
        side = 0 if plan.ins[0] is not None or plan.ins[1] is None else 1
        for k, axes in ((0, lc), (1, rc)):
            how = gate if k == side else finite_where_removed
            for a in axes:
                invals[k] = self._apply(how, invals[k], plan.ins[k], a)
        return self._bind(eqn, invals)

    def _fill_removed(self, eqn, invals, plan, fill):
        """max, min, argmax, argmin, prod: removed positions hold the reduction's identity
        ``fill``, so they cannot win (or scale the product)."""
        x = invals[0]
        for d in eqn.params["axes"]:
            pm = self.position_mask(plan.ins[0], d)
            if pm is None:
                continue
            present = _along(pm, jnp.ndim(x), d) > 0
            x = jnp.where(present, x, jnp.asarray(fill, x.dtype))
        return self._bind(eqn, [x] + invals[1:])

    def _channelwise(self, eqn, invals, plan):
        """Everything else works channel by channel; a division by a reduced count is
        rewritten to divide by the kept count (``pruning.counts``)."""
        division = self.counts.rewrite_division(eqn, invals)
        return self._bind(eqn, invals if division is None else division)

    def _call(self, eqn, invals, path):
        """Control flow: the bodies are rewritten too. A custom-derivative function keeps
        its rule when its body works channel by channel (nothing to mask in there)."""
        if eqn.primitive in CONTROL_FLOW:
            return rebind_control_flow(eqn, invals, self, path)
        if eqn.primitive in CUSTOM_RULES:
            _, mixes = body_changes(self.plan.at, eqn, path, self._changed)
            if not mixes:
                return bind_equation(eqn, invals)
            warn_rule_dropped(eqn)
        return None

    def __call__(self, eqn, invals, path):
        plan = self.plan.at(path, eqn)
        if call_jaxpr(eqn) is not None or eqn.primitive in CONTROL_FLOW:
            return self._call(eqn, invals, path)
        rule = MASK_RULES.get(eqn.primitive, MaskHook._channelwise)
        return rule(self, eqn, list(invals), plan)

    def _reduce_sum(self, eqn, invals, plan):
        x = invals[0]
        n_old, n_new, masked_any = 1.0, 1.0, False
        for d in eqn.params["axes"]:
            size = eqn.invars[0].aval.shape[d]
            pm = self.position_mask(plan.ins[0], d)
            if pm is None:
                if not isinstance(size, (int, np.integer)):
                    return bind_equation(eqn, [x] + invals[1:])
                n_old *= size
                n_new = n_new * size
                continue
            masked_any = True
            x = gate(x, _along(pm, jnp.ndim(x), d))
            n_old *= size
            n_new = n_new * jnp.sum(pm)
        outs = bind_equation(eqn, [x] + invals[1:])
        if masked_any:
            self.counts.mark(outs[0], n_old, jnp.where(n_new > 0, n_new, 1.0))
        return outs


# Where masked channels meet: each rule masks the operands and binds the equation.
MASK_RULES = P.rule_table({
    P.LINEAR: MaskHook._contraction,
    P.reduce_sum_p: MaskHook._reduce_sum,
    (P.reduce_max_p, P.argmax_p): functools.partial(MaskHook._fill_removed, fill=-np.inf),
    (P.reduce_min_p, P.argmin_p): functools.partial(MaskHook._fill_removed, fill=np.inf),
    P.reduce_prod_p: functools.partial(MaskHook._fill_removed, fill=1),
})


def masked(fn: Callable, groups: Union[GroupAnalysis, Sequence[ChannelGroup]]) -> Callable:
    """``g(variables, masks, *inputs)``: ``fn`` with group ``gid``'s channels scaled by
    ``masks[gid]`` (see the module docstring); groups missing from ``masks`` are unmasked.
    ``groups``: what ``find_groups`` returned (its analysis is used, not redone); a mask
    may name its group by position or by key."""
    analysis = analysis_of(groups)
    plan = Plan(analysis)
    sizes = {g.id: g.size for g in analysis.groups}
    prunable = {g.id for g in analysis.groups if g.prunable}
    cache: Dict[Any, Any] = {}

    def g(variables, masks, *inputs):
        masks = keep_sets.by_id(analysis, masks)
        for gid, m in masks.items():
            if gid not in prunable:
                raise ValueError(f"group {gid} is not a prunable channel group")
            if jnp.shape(m) != (sizes[gid],):
                raise ValueError(f"mask of group {gid} has shape {jnp.shape(m)}, "
                                 f"expected ({sizes[gid]},)")
        leaves = jax.tree_util.tree_leaves((variables, *inputs))
        key = aval_key(leaves)
        if key not in cache:
            cache[key] = retrace(fn, spec_tree(variables), inputs, plan)
        closed, out_tree, aligned = cache[key]
        outs = evaluate(closed, leaves, MaskHook(aligned, masks))
        return jax.tree_util.tree_unflatten(out_tree, outs)

    g.analysis = analysis
    return g


def keep_to_masks(groups: Sequence[ChannelGroup], keep: Dict[Union[int, str], Sequence[int]],
                  dtype=jnp.float32) -> Dict[int, jnp.ndarray]:
    """0/1 masks of a keep-set (only the groups listed in ``keep``, by position or key),
    keyed by group position; each entry is a boolean mask over the group's channels or
    distinct channel indices (``pruning.keep_sets``)."""
    groups = keep_sets.group_list(groups)
    masks = {}
    for gid, kept in keep_sets.by_id(groups, keep).items():
        group = keep_sets.group_named(groups, gid)
        m = np.zeros(group.size, np.float32)
        m[kept_indices(group, kept)] = 1.0
        masks[gid] = jnp.asarray(m, dtype)
    return masks
