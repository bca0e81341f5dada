"""Physical pruning: the same network, natively narrower.

``prune(fn, variables, x, keep={group: kept channels})`` (a group named by its position or
its key, ``pruning.keep_sets``) slices every member parameter of every group along its
axes, and rewrites the model by re-evaluating its jaxpr (``core.rewrite.evaluate``) with a
hook that re-binds each equation on the narrower operands: shape parameters come from
``pruning.shape_rules``, means over a pruned axis divide by the kept count
(``pruning.counts``), and groups that lose every channel make whole branches vanish with
their constant contributions folded (``pruning.branch_removal``).
Loop and branch bodies are rewritten the same way (``core.rewrite.rebind_control_flow``: a
scan's stacked weights and its carry, e.g. a state-space layer's state, shrink together),
and a ``custom_jvp``/``custom_vjp`` function keeps its derivative rule
(``core.rewrite.rebind_custom_rule``) when its body works channel by channel.

``Pruned.fn`` is a plain JAX function: for each input signature it traces the original
model at those shapes (so another batch size, a symbolic batch for export or ``vmap``
work), applies the rewrite once, removes dead code, and runs the resulting jaxpr. Parameters
that disappear (a removed branch's kernels, arrays with no channel left) are not in
``Pruned.variables``; ``Pruned.fn`` finds the others by their path. It computes at the
floating dtypes the model was analysed at (the rewrite is aligned to that trace's
equations): floating variables and inputs of another dtype are cast on entry, so a float32
call of a bfloat16 model (ONNX export makes one) runs the bfloat16 model. It runs the model
as ``fn`` was traced (BatchNorm in inference mode for ``train=False``); ``Pruned.train_fn``
is the training-mode model pruned alike, when ``prune`` is given one (``pruning.training``).
"""
import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.interpreters import partial_eval as pe
from jax.extend.core import ClosedJaxpr

from core import primitives as P
from core.channel_groups import ChannelGroup, GroupAnalysis, analyze
from core.rewrite import (CONTROL_FLOW, CUSTOM_RULES, bind_equation, evaluate,
                          rebind_control_flow, rebind_custom_rule)
from core.rewritten import Rewritten, RewrittenFunction, nest_by_path
from core.trace import call_jaxpr, source_line, sub_jaxprs
from pruning import branch_removal as br, keep_sets, training
from pruning.counts import ReductionCounts
from pruning.groups import analysis_of
from pruning.keep_sets import kept_indices
from pruning.masked import warn_rule_dropped
from pruning.plan import AxisSpec, Plan, body_changes, retrace
from pruning.shape_rules import PruneError, Rebind, rebind, select_positions


class PruneHook:
    """The per-equation rewrite of one evaluation (see the module docstring)."""

    def __init__(self, plan: Plan, keep: Dict[int, np.ndarray], kept_cache: Dict):
        self.plan = plan
        self.keep = keep
        self._cache = kept_cache
        self.counts = ReductionCounts()
        self.notes: List[str] = []
        self._specs: Dict[int, Tuple[Any, Any]] = {}    # id(value) -> (value, its VarSpec)

    def kept(self, spec: AxisSpec) -> Optional[np.ndarray]:
        key = id(spec)
        if key not in self._cache:
            self._cache[key] = spec.kept_positions(self.keep)
        return self._cache[key]

    def conform(self, value, specs):
        """Slices a full-size value (a constant, a literal) to the kept positions."""
        if specs is None:
            return value
        for d, spec in enumerate(specs):
            kept = self.kept(spec) if spec is not None else None
            shape = value.shape if hasattr(value, "shape") else np.shape(value)
            if kept is None or shape[d] != spec.size:
                continue
            new_shape = tuple(shape[:d]) + (len(kept),) + tuple(shape[d + 1:])
            if len(kept) == 0:
                value = br.Vanished(new_shape, value.dtype)
            elif isinstance(value, br.Vanished):
                value = br.Vanished(new_shape, value.dtype)
            elif isinstance(value, br.Bcast):
                small = value.small
                if small.shape[d] != 1:
                    small = select_positions(small, kept, d)
                value = br.Bcast(small, new_shape)
            else:
                value = select_positions(value, kept, d)
        return value

    def _changed(self, spec: AxisSpec) -> bool:
        return self.kept(spec) is not None

    def _arrays(self, invals, specs) -> list:
        return [br.materialize(self.conform(v, s)) for v, s in zip(invals, specs)]

    def _control_flow(self, ctx: Rebind, path):
        """cond / scan / while with their bodies pruned like the rest: the carries keep one
        layout across iterations (the analysis unified them), so they shrink consistently."""
        changes, _ = body_changes(self.plan.at, ctx.eqn, path, self._changed)
        if not changes and not ctx.changed():
            return self._after(ctx, bind_equation(ctx.eqn, [br.materialize(v)
                                                            for v in ctx.invals]))
        outs = rebind_control_flow(ctx.eqn, self._arrays(ctx.invals, ctx.plan.ins), self, path,
                                   finish=lambda values: [br.materialize(v) for v in values])
        return self._after(ctx, outs)

    def _custom_rule(self, ctx: Rebind, path):
        """custom_jvp / custom_vjp: a body that works channel by channel keeps its rule
        (evaluated at full width on the kept channels, zeros elsewhere); one in which pruned
        channels meet is inlined and differentiated as rewritten, with a warning. So is one
        that receives what a removed branch left (``Vanished``, folded ``Bcast``
        constants): inlined, its equations fold those constants further."""
        eqn, plan = ctx.eqn, ctx.plan
        if any(isinstance(v, (br.Vanished, br.Bcast)) for v in ctx.invals):
            return None
        changes, mixes = body_changes(self.plan.at, eqn, path, self._changed)
        if mixes:
            warn_rule_dropped(eqn)
            return None
        if not changes and not ctx.changed():
            return self._after(ctx, bind_equation(eqn, [br.materialize(v) for v in ctx.invals]))
        sub = call_jaxpr(eqn)

        def body(*args):
            return [br.materialize(v) for v in evaluate(sub, list(args), self, path + (0,))]

        def specs(side, k):
            return (plan.ins if side == "in" else plan.outs)[k]

        outs = rebind_custom_rule(
            eqn, self._arrays(ctx.invals, plan.ins), body,
            lambda side, k, v: self.widen(v, specs(side, k)),
            lambda side, k, v: br.materialize(self.conform(v, specs(side, k))))
        return self._after(ctx, outs)

    def __call__(self, eqn, invals, path):
        plan = self.plan.at(path, eqn)
        if not plan.matched:
            return self._unmatched(eqn, invals)
        ctx = Rebind(eqn, list(invals), plan, self.kept)
        if eqn.primitive in CONTROL_FLOW:
            return self._control_flow(ctx, path)
        if eqn.primitive in CUSTOM_RULES and call_jaxpr(eqn) is not None:
            return self._custom_rule(ctx, path)
        if call_jaxpr(eqn) is not None:
            return None                      # inlined by evaluate; the hook sees its body
        if sub_jaxprs(eqn):
            if ctx.changed():
                raise PruneError(f"{eqn.primitive.name} at {source_line(eqn)}: pruning "
                                 f"channels that enter a loop or branch body")
            return bind_equation(eqn, [br.materialize(v) for v in invals])
        ctx.invals = [self.conform(v, s) for v, s in zip(invals, plan.ins)]
        shapes = [ctx.out_shape(k) for k in range(len(eqn.outvars))]
        if br.results_vanish(shapes):
            return self._after(ctx, [br.Vanished(s, v.aval.dtype)
                                     for s, v in zip(shapes, eqn.outvars)])
        if any(isinstance(v, br.Vanished) for v in ctx.invals):
            outs = br.vanish(ctx)
            if outs is None:
                self.notes.append(f"{eqn.primitive.name} at {source_line(eqn)}: an emptied "
                                  f"operand had to be materialized as a zero-size array")
                ctx.invals = [br.materialize(v) for v in ctx.invals]
                outs = rebind(ctx)
            return self._after(ctx, outs)
        division = self.counts.rewrite_division(eqn, ctx.invals)
        if division is not None:
            ctx.invals = division
        outs = None
        if any(isinstance(v, br.Bcast) for v in ctx.invals):
            outs = br.fold(ctx)
            if outs is None:
                ctx.invals = [br.materialize(v) for v in ctx.invals]
        if outs is None:
            outs = rebind(ctx)
        return self._after(ctx, outs)

    def record(self, value, specs) -> None:
        if specs is not None:
            self._specs[id(value)] = (value, specs)

    def expand(self, value):
        """A narrowed value back at full size, zeros at removed positions."""
        found = self._specs.get(id(value))
        if found is None or found[0] is not value:
            return br.materialize(value)
        return self.widen(value, found[1])

    def widen(self, value, specs):
        """``value`` (narrowed as ``specs`` say) at full size, zeros at removed positions."""
        if specs is None:
            return br.materialize(value)
        if isinstance(value, br.Vanished):
            shape = tuple(s.size if s is not None and self.kept(s) is not None else n
                          for s, n in zip(specs, value.shape))
            return jnp.zeros(shape, value.dtype)
        value = br.materialize(value)
        for d, spec in enumerate(specs):
            kept = self.kept(spec) if spec is not None else None
            if kept is None:
                continue
            # A gather from [value, 0] (not a scatter into zeros: about twice as fast on
            # CPU, and unlike a multiply by 0/1 it never turns an inf into NaN).
            source = np.full(spec.size, len(kept), np.int32)
            source[kept] = np.arange(len(kept))
            shape = list(jnp.shape(value))
            shape[d] = 1
            padded = jnp.concatenate([value, jnp.zeros(shape, jnp.result_type(value))], d)
            value = jnp.take(padded, jnp.asarray(source), axis=d)
        return value

    def _unmatched(self, eqn, invals):
        """An equation only the re-traced model has (a symbolic batch turns slices into
        gathers): it runs at full size on expanded operands; the next analysed equation
        takes the kept positions again. Exact, though not as lean as a matched one."""
        if call_jaxpr(eqn) is not None:
            return None
        return bind_equation(eqn, [self.expand(v) for v in invals])

    def _after(self, ctx: Rebind, outs):
        for out, specs in zip(outs, ctx.plan.outs):
            self.record(out, specs)
        eqn = ctx.eqn
        if eqn.primitive is P.reduce_sum_p:
            n_old, n_new, changed = 1, 1, False
            for d in eqn.params["axes"]:
                old = ctx.in_size(0, d)
                kept = ctx.in_kept(0, d)
                if not isinstance(old, (int, np.integer)):
                    return outs
                n_old *= int(old)
                n_new *= len(kept) if kept is not None else int(old)
                changed |= kept is not None
            if changed:
                self.counts.mark(outs[0], n_old, n_new)
        else:
            self.counts.follow(eqn, ctx.invals, outs)
        return outs


@dataclasses.dataclass
class _Compiled(Rewritten):
    param_indices: List[int] = dataclasses.field(default_factory=list)   # param invars read
    notes: List[str] = dataclasses.field(default_factory=list)


def _as_dtype(value, dtype):
    """A floating ``value`` cast to the floating ``dtype`` the model was analysed at."""
    have = jnp.result_type(value)
    if have != dtype and jnp.issubdtype(have, jnp.floating) and jnp.issubdtype(
            dtype, jnp.floating):
        return jax.lax.convert_element_type(value, dtype)
    return value


class PrunedFunction(RewrittenFunction):
    """``fn(variables, *inputs)`` of the pruned model (see the module docstring): each
    signature's program is the pruning hook's rewrite, dead code removed."""

    def __init__(self, fn: Callable, variables, analysis: GroupAnalysis, plan: Plan,
                 keep: Dict[int, np.ndarray], param_shapes: List[Tuple[tuple, Any]]):
        super().__init__(fn, variables)
        self.analysis = analysis
        self.plan = plan
        self.keep = keep
        self.param_shapes = param_shapes
        self.param_paths = [p for p, is_p in zip(analysis.traced.in_paths,
                                                 analysis.traced.is_param) if is_p]
        self._dtype_at = {p: dtype for p, (_, dtype) in zip(self.param_paths, param_shapes)}
        self._kept_cache: Dict = {}

    def rewrite(self, *inputs) -> _Compiled:
        closed, out_tree, aligned = retrace(self.original_fn, self.variables_spec, inputs,
                                            self.plan)
        flat_inputs = jax.tree_util.tree_leaves(inputs)
        live = [i for i, (shape, _) in enumerate(self.param_shapes) if not br.is_empty(shape)]
        notes: List[str] = []

        def rewritten(*args):
            params: List[Any] = [br.Vanished(shape, dtype) for shape, dtype in self.param_shapes]
            for i, a in zip(live, args[:len(live)]):
                params[i] = a
            hook = PruneHook(aligned, self.keep, self._kept_cache)
            for value, specs in zip(params, self.plan.invars):
                hook.record(value, specs)
            outs = evaluate(closed, params + list(args[len(live):]), hook)
            notes[:] = hook.notes
            return [br.materialize(o) for o in outs]

        specs = ([jax.ShapeDtypeStruct(*self.param_shapes[i]) for i in live]
                 + list(flat_inputs))
        traced = jax.make_jaxpr(rewritten)(*specs)
        n_out = len(traced.jaxpr.outvars)
        instantiate = ([False] * (len(traced.jaxpr.constvars) + len(live))
                       + [True] * len(flat_inputs))
        jaxpr, used_consts, used = pe.dce_jaxpr_consts(traced.jaxpr, [True] * n_out,
                                                       instantiate)
        consts = [c for c, u in zip(traced.consts, used_consts) if u]
        used_params = [i for i, u in zip(live, used[:len(live)]) if u]
        return _Compiled(ClosedJaxpr(jaxpr, consts), out_tree,
                         tuple(self.param_paths[i] for i in used_params), used_params, notes)

    def _at_analysed_dtypes(self, inputs):
        leaves, tree = jax.tree_util.tree_flatten(inputs)
        dtypes = [v.aval.dtype for _, v in self.analysis.traced.input_invars()]
        if len(dtypes) != len(leaves):
            return inputs
        return jax.tree_util.tree_unflatten(tree, [_as_dtype(x, d)
                                                   for x, d in zip(leaves, dtypes)])

    def parameter(self, path: str, leaf):
        return _as_dtype(leaf, self._dtype_at[path])

    def run(self, variables, *inputs, hook=None):
        return super().run(variables, *self._at_analysed_dtypes(inputs), hook=hook)


@dataclasses.dataclass
class Pruned:
    """A physically pruned model: ``fn(variables, *inputs)`` with smaller ``variables``."""
    fn: PrunedFunction
    variables: Any
    groups: List[ChannelGroup]
    keep: Dict[int, np.ndarray]        # group id -> kept channel indices (pruned groups)
    sizes: Dict[int, int]              # group id -> kept channel count (every group)
    removed_params: List[str]          # parameters gone entirely (removed branches)
    notes: List[str]                   # places that could not avoid a zero-size array
    train_fn: Optional[PrunedFunction] = None   # the training-mode model, pruned alike

    @property
    def analysis(self) -> GroupAnalysis:
        return self.fn.analysis

    @property
    def keep_by_key(self) -> Dict[str, List[int]]:
        """``keep`` named by group keys: what a saved keep-set should hold."""
        return keep_sets.by_key(self.groups, self.keep)

    @property
    def effective_sizes(self) -> Dict[int, int]:
        """``sizes`` with 0 for groups none of whose parameters survived: emptying a group can
        leave others that only served it dead (the conv feeding a removed branch), and
        dead-code elimination removed them too."""
        removed = set(self.removed_params)
        return {g.id: (0 if all(m.path in removed for m in g.members) else self.sizes[g.id])
                for g in self.groups}


def _check_keep(analysis: GroupAnalysis, keep) -> Dict[int, np.ndarray]:
    """``keep`` by group position (keys resolved), kept indices validated; groups that keep
    every channel dropped."""
    checked = {}
    for gid, kept in keep_sets.by_id(analysis, keep).items():
        group = analysis.groups[gid]
        if not group.prunable:
            raise ValueError(f"group {gid} '{group.key}' is not prunable: {group.reason}")
        kept = kept_indices(group, kept)
        if len(kept) < group.size:
            checked[gid] = kept
    return checked


def _pruned_function(fn: Callable, variables, analysis: GroupAnalysis,
                     keep: Dict[int, np.ndarray], example_inputs):
    """``(PrunedFunction, sliced parameter leaves, program at example_inputs)``."""
    plan = Plan(analysis)
    leaves = jax.tree_util.tree_leaves(variables)
    hook = PruneHook(plan, keep, {})
    sliced, shapes = [], []
    for i, leaf in enumerate(leaves):
        value = hook.conform(np.asarray(leaf), plan.invars[i])
        shapes.append((tuple(value.shape), np.dtype(leaf.dtype)))
        sliced.append(value)
    pruned_fn = PrunedFunction(fn, variables, analysis, plan, keep, shapes)
    return pruned_fn, sliced, pruned_fn.at(*example_inputs)


def prune(fn: Callable, variables, *example_inputs, keep: Dict[Union[int, str], Sequence[int]],
          analysis: Union[GroupAnalysis, Sequence[ChannelGroup], None] = None,
          train_fn: Optional[Callable] = None) -> Pruned:
    """Removes channels: ``keep[g]`` are the channel indices group ``g`` keeps, ``g`` being
    the group's position or its ``key`` (groups not listed keep all; an empty list removes
    the group and whatever only served it). ``analysis``: what ``find_groups`` returned
    (or a ``GroupAnalysis``) for this model, used as it is (no re-analysis).
    ``train_fn(variables, *inputs) -> (outputs, updates)``: the model in training mode
    (``module.apply(v, x, train=True, mutable=['batch_stats'])``); ``Pruned.train_fn`` is
    then its pruned version (``pruning.training``). ``Pruned.fn`` always runs the model
    as ``fn`` was traced, BatchNorm in inference mode if so."""
    analysis = analysis_of(analysis) or analyze(fn, variables, *example_inputs)
    keep = _check_keep(analysis, keep)
    pruned_fn, sliced, compiled = _pruned_function(fn, variables, analysis, keep,
                                                   example_inputs)
    leaves = jax.tree_util.tree_leaves(variables)
    used = set(compiled.param_indices)
    paths = pruned_fn.param_paths
    if len(used) == len(leaves):
        treedef = jax.tree_util.tree_structure(variables)
        new_vars = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(v) for v in sliced])
    else:
        order = sorted(used)
        new_vars = nest_by_path([paths[i] for i in order], [jnp.asarray(sliced[i]) for i in order])
    sizes = {g.id: (len(keep[g.id]) if g.id in keep else g.size) for g in analysis.groups}
    removed = [paths[i] for i in range(len(leaves)) if i not in used]
    train = None
    if train_fn is not None:
        train_analysis, train_keep = training.training_analysis(
            train_fn, variables, example_inputs, analysis, keep)
        train = _pruned_function(train_fn, variables, train_analysis, train_keep,
                                 example_inputs)[0]
    return Pruned(pruned_fn, new_vars, analysis.groups, keep, sizes, removed,
                  list(compiled.notes), train)
