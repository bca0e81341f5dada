"""The channel groups re-indexed by equation path, for the rewriting passes.

``core.channel_groups`` answers "which group sits on axis k of this variable" per scope.
Physical pruning and masking need that answer while they re-evaluate the model with
``core.rewrite.evaluate``, whose hook sees an equation and its *path* (``core.trace.iter_eqns``
numbering), not a scope. ``Plan`` walks the analysis' scopes once and stores, for every
equation path, an ``AxisSpec`` per axis of every operand and result that holds channels of
a group (``None`` everywhere else, which is almost everywhere).

The plan also serves a jaxpr traced at *other* input shapes (another batch size, a
symbolic batch for export, the per-example shapes under ``vmap``): channel axes do not
depend on the batch, and tracing the same model again gives the same equations in the same
order, except for a few shape computations a symbolic batch adds. ``retrace`` makes that
jaxpr and ``Plan.align`` matches its equations to the analysed ones (identical sequences
map one to one; otherwise the longest matching runs of primitives, recursively into
sub-jaxprs); the added equations get no channel axes.
"""
import dataclasses
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from core import primitives as P
from core.channel_groups import GroupAnalysis
from core.channel_types import Concat
from core.rewritten import aval_key, spec_tree  # noqa: F401  (re-exported)
from core.trace import is_literal, iter_eqns, matching_equations, source_line, sub_jaxprs

Path = Tuple[int, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class AxisSpec:
    """Which group channel owns each position of one axis.

    ``owners`` holds ``(group id, owner, group size)``: ``owner[p]`` is the channel of that
    group at position ``p`` (``group size`` where the group is absent). Several groups may
    share an axis: side by side (a concatenation) or crossed (heads times head_dim), so a
    position is kept only if every group owning it keeps its channel there.
    """
    size: int
    owners: Tuple[Tuple[int, np.ndarray, int], ...]

    def kept_positions(self, keep: Dict[int, np.ndarray]) -> Optional[np.ndarray]:
        """Sorted positions that survive ``keep`` (``None``: the axis is unchanged)."""
        alive = None
        for gid, owner, n in self.owners:
            kept = keep.get(gid)
            if kept is None:
                continue
            row = np.zeros(n + 1, bool)
            row[np.asarray(kept, np.int64)] = True
            row[n] = True
            here = row[owner]
            alive = here if alive is None else alive & here
        if alive is None or alive.all():
            return None
        return np.flatnonzero(alive)

    def position_mask(self, masks: Dict[int, Any]):
        """The mask of each position (product over the groups owning it), or ``None``."""
        pm = None
        for gid, owner, _ in self.owners:
            m = masks.get(gid)
            if m is None:
                continue
            m = jnp.asarray(m)
            ext = jnp.concatenate([m, jnp.ones((1,), m.dtype)])
            here = ext[owner]
            pm = here if pm is None else pm * here
        return pm


VarSpec = Optional[Tuple[Optional[AxisSpec], ...]]   # None: no axis holds a group


@dataclasses.dataclass(frozen=True)
class EquationPlan:
    primitive: str
    ins: Tuple[VarSpec, ...]
    outs: Tuple[VarSpec, ...]
    source: Any                    # the analysed equation (for messages)
    matched: bool = True           # False: an equation the analysed trace did not have


class StructureMismatch(RuntimeError):
    """A re-traced model does not have the equations the analysis saw."""


class Plan:
    """``eqns[path]`` -> ``EquationPlan``; ``params[i]`` -> spec of top-level invar ``i``."""

    def __init__(self, analysis: GroupAnalysis):
        self.analysis = analysis
        self.group_sizes = {g.id: g.size for g in analysis.groups}
        self._memo: Dict[Any, Optional[AxisSpec]] = {}
        self.eqns: Dict[Path, EquationPlan] = {}
        self.eqns_at: Dict[Path, list] = {}     # jaxpr prefix -> its equations, in order
        scope = analysis.scope
        self.invars: Tuple[VarSpec, ...] = tuple(
            self._var(scope, v) for v in analysis.traced.jaxpr.invars)
        self._walk(scope, ())

    # ------------------------------------------------------------ building
    def _key(self, layout):
        types = self.analysis.types
        if isinstance(layout, int):
            return types.find(layout)
        parts = layout.parts if isinstance(layout, Concat) else layout.factors
        return ("c" if isinstance(layout, Concat) else "p",) + tuple(self._key(p) for p in parts)

    def _spec(self, layout) -> Optional[AxisSpec]:
        types = self.analysis.types
        layout = types.resolve(layout)
        key = self._key(layout)
        if key in self._memo:
            return self._memo[key]
        owners = []
        size = types.size_of(layout)
        for node, index_map in types.positions(layout).items():
            gid = self.analysis.group_id(node)
            if gid is None:
                continue
            n = index_map.shape[0]
            owner = np.full(size, n, np.int64)
            owner[index_map.reshape(-1)] = np.repeat(np.arange(n), index_map.shape[1])
            owners.append((gid, owner, n))
        spec = AxisSpec(size, tuple(owners)) if owners else None
        self._memo[key] = spec
        return spec

    def _var(self, scope, atom) -> VarSpec:
        if is_literal(atom) or atom not in scope.env:
            return None
        specs = tuple(self._spec(layout) for layout in scope.env[atom])
        return specs if any(s is not None for s in specs) else None

    def _walk(self, scope, prefix: Path) -> None:
        self.eqns_at[prefix] = list(scope.jaxpr.eqns)
        for i, eqn in enumerate(scope.jaxpr.eqns):
            path = prefix + (i,)
            self.eqns[path] = EquationPlan(
                eqn.primitive.name, tuple(self._var(scope, v) for v in eqn.invars),
                tuple(self._var(scope, v) for v in eqn.outvars), eqn)
            for k, child in enumerate(scope.children.get(i, ())):
                self._walk(child, path + (k,))

    # ------------------------------------------------------------- look-ups
    def at(self, path: Path, eqn) -> EquationPlan:
        plan = self.eqns.get(path)
        if plan is None or plan.primitive != eqn.primitive.name:
            seen = plan.primitive if plan else "nothing"
            raise StructureMismatch(
                f"re-traced model has '{eqn.primitive.name}' at equation {path} "
                f"({source_line(eqn)}) where the analysis saw {seen}; the model traces to "
                f"different equations at these input shapes")
        return plan

    def align(self, jaxpr) -> "Aligned":
        """The plan of each equation of ``jaxpr`` (traced at other shapes), by its path."""
        found: Dict[Path, EquationPlan] = {}
        self._align((), jaxpr, (), found)
        return Aligned(found)

    def _align(self, old_prefix: Path, jaxpr, new_prefix: Path, found) -> None:
        old = self.eqns_at.get(old_prefix, [])
        for i, j in matching_equations(old, jaxpr.eqns):
            plan, eqn = self.eqns[old_prefix + (i,)], jaxpr.eqns[j]
            _check_ranks(plan, eqn)
            found[new_prefix + (j,)] = plan
            for k, sub in enumerate(sub_jaxprs(eqn)):
                if old_prefix + (i, k) in self.eqns_at:
                    self._align(old_prefix + (i, k), sub.jaxpr, new_prefix + (j, k), found)


def _check_ranks(plan: EquationPlan, eqn) -> None:
    for specs, atoms in ((plan.ins, eqn.invars), (plan.outs, eqn.outvars)):
        for spec, atom in zip(specs, atoms):
            if spec is not None and len(spec) != len(getattr(atom.aval, "shape", ())):
                raise StructureMismatch(
                    f"'{eqn.primitive.name}' at {source_line(eqn)} has operands of another "
                    f"rank than in the analysed model")


class Aligned:
    """Equation plans of a re-traced jaxpr; equations it added have no channel axes."""

    def __init__(self, found: Dict[Path, EquationPlan]):
        self.found = found

    def at(self, path: Path, eqn) -> EquationPlan:
        plan = self.found.get(path)
        if plan is None:
            return EquationPlan(eqn.primitive.name, (None,) * len(eqn.invars),
                                (None,) * len(eqn.outvars), eqn, matched=False)
        return plan


# Where channels of one axis meet each other (operand, axis): the contracted axes of a
# dot, a conv's input features, reduced axes. Everywhere else a channel only meets itself.
def _dot_axes(eqn):
    (lc, rc), _ = eqn.params["dimension_numbers"]
    return [(0, a) for a in lc] + [(1, a) for a in rc]


def _conv_axes(eqn):
    lhs_spec, rhs_spec, _ = eqn.params["dimension_numbers"]
    return [(0, lhs_spec[1]), (1, rhs_spec[1])]


def _reduced_axes(eqn):
    return [(0, a) for a in eqn.params["axes"]]


def _variadic_reduce_axes(eqn):
    n = len(eqn.invars) // 2
    return [(k, a) for k in range(n) for a in eqn.params["dimensions"]]


MEETING_AXES = P.rule_table({P.dot_general_p: _dot_axes, P.conv_general_dilated_p: _conv_axes,
                             P.reduce_p: _variadic_reduce_axes, P.REDUCTIONS: _reduced_axes})


def body_changes(plan_at: Callable, eqn, path: Path,
                 changed: Callable[[AxisSpec], bool]) -> Tuple[bool, bool]:
    """``(changes, mixes)`` for the sub-jaxprs of ``eqn``: whether any equation inside has
    a changed axis (``changed(spec)``: pruned, or masked), and whether channels of such an
    axis meet each other in there (so the body is not channel by channel)."""
    changes = mixes = False
    for k, sub in enumerate(sub_jaxprs(eqn)):
        for sub_path, inner in iter_eqns(sub.jaxpr, path + (k,)):
            plan = plan_at(sub_path, inner)
            for specs in plan.ins + plan.outs:
                if specs is not None and any(a is not None and changed(a) for a in specs):
                    changes = True
            for operand, axis in MEETING_AXES.get(inner.primitive, _none)(inner):
                specs = plan.ins[operand]
                if specs is not None and specs[axis] is not None and changed(specs[axis]):
                    return True, True
    return changes, mixes


def _none(eqn):
    return ()


def retrace(fn: Callable, variables_spec, inputs: Sequence, plan: Plan):
    """``(closed jaxpr, output treedef, Aligned plans)`` of ``fn(variables, *inputs)`` at
    the shapes of ``inputs`` (concrete, traced or symbolic); ``variables_spec`` is a pytree
    of ``ShapeDtypeStruct`` of the full-size variables."""
    specs = spec_tree(tuple(inputs))       # each input may be any pytree of arrays
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(variables_spec, *specs)
    return closed, jax.tree_util.tree_structure(out_shape), plan.align(closed.jaxpr)
