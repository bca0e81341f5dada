"""Channel groups of any JAX model: which channels must be removed together.

Structured pruning must remove a channel everywhere it lives at once: in the conv that
makes it, the BatchNorm that scales it, every residual branch added to it, the next
layer's kernel, a concatenation's slice of a consumer... Nothing here knows about layers.
``analyze`` traces ``fn(variables, *inputs)`` to a jaxpr (``core.trace``), gives each axis
of each parameter a fresh channel node, runs the rule table over every equation
(``core.interpreter``, ``core.rules_compute``, ``core.rules_layout``), which unifies the
axes that must shrink together (``core.channel_types``), fixes the axes of the model's
inputs and outputs, and reads the groups off the union-find.

A ``ChannelGroup`` is a set of channels of one size; its members are
``(parameter path, axis, index map)``. The index map is an int array
``(group size, multiplicity)``: removing channel ``c`` of the group removes positions
``index_map[c]`` of that parameter axis. Multiplicity is 1 for a plain axis; inside a
``Product`` it is the other factor (removing a head removes ``head_dim`` positions of a
fused projection), and a Concat offsets the positions (the q, k and v thirds of a fused
qkv kernel, the branches feeding a concatenation).

For the rewriting passes (physical pruning re-binds each primitive with new shapes; a
masked model multiplies by ``{group_id: mask}``), ``GroupAnalysis`` answers "which group,
with which index map, is on axis k of this variable" for EVERY variable of the jaxpr,
intermediates and nested jaxprs included:

- ``analysis.scope`` is the top jaxpr's ``Scope``; ``scope.children[i]`` lists the scopes
  of the sub-jaxprs of equation ``i`` (one per call / branch / body, in order).
- ``analysis.axis_groups(var, axis, scope)`` -> ``[(group_id or None, index_map), ...]``
  (None: channels in no reported group, e.g. space, batch or classes; the map then says
  where they sit).
- ``analysis.axis_layout(var, axis, scope)`` -> the resolved layout (a node ``int``,
  ``Concat`` or ``Product``); ``analysis.group_id(node)`` maps a node to its group.
- ``analysis.axis_size(layout, sizes)`` -> the axis size when each group keeps
  ``sizes[group_id]`` channels (what a pruned equation's new shape is made of).
"""
import dataclasses
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from core import rules_compute, rules_layout  # noqa: F401  (fill the rule table)
from core.channel_types import Concat, Layout, Reason
from core.interpreter import ChannelInterpreter, Scope
from core.trace import Traced, shape_of, source_line, trace

# Fixed kinds that mark axes which are not channels at all (kernel windows, unit axes):
# their "groups" are not reported.
NOT_CHANNELS = ("window", "unit")


@dataclasses.dataclass(frozen=True)
class Member:
    """One parameter axis (or a part of it) holding a group's channels."""
    path: str
    axis: int
    index_map: np.ndarray          # (group size, multiplicity) positions along the axis
    param_index: int               # position of the parameter among the jaxpr invars
    axis_size: int

    @property
    def is_whole_axis(self) -> bool:
        return (self.index_map.shape[1] == 1 and self.index_map.shape[0] == self.axis_size
                and bool(np.all(self.index_map[:, 0] == np.arange(self.axis_size))))

    def describe(self) -> str:
        m = self.index_map
        where = f"axis {self.axis}"
        if self.is_whole_axis:
            return where
        if m.shape[1] == 1 and np.all(np.diff(m[:, 0]) == 1):
            return f"{where} [{m[0, 0]}:{m[-1, 0] + 1}] of {self.axis_size}"
        return f"{where}, {m.shape[1]} positions per channel of {self.axis_size}"


@dataclasses.dataclass(eq=False)
class ChannelGroup:
    """Channels that can only be removed together, with where they live."""
    id: int
    size: int
    members: Tuple[Member, ...]
    prunable: bool
    reason: Optional[str]          # why not prunable
    node: int                      # union-find root (for GroupAnalysis look-ups)
    analysis: "GroupAnalysis" = dataclasses.field(repr=False, default=None)
    key: str = ""                  # stable name from the members' paths (see assign_keys)

    @property
    def params(self) -> List[str]:
        return [m.path for m in self.members]

    def member(self, path: str, axis: Optional[int] = None) -> Member:
        for m in self.members:
            if m.path == path and (axis is None or m.axis == axis):
                return m
        raise KeyError(f"{path} (axis {axis}) is not a member of group {self.id}")

    @property
    def ops(self) -> List[Tuple[str, str]]:
        """``(primitive, source line)`` of the equations the group passes through."""
        return self.analysis.ops_of(self.id)

    def __str__(self) -> str:
        state = "prunable" if self.prunable else f"NOT prunable: {self.reason}"
        lines = [f"ChannelGroup {self.id} '{self.key}': {self.size} channels, {state}"]
        for m in self.members:
            lines.append(f"  {m.path}  {m.describe()}")
        by_line: Dict[str, List[str]] = {}
        for prim, src in self.ops:
            names = by_line.setdefault(src, [])
            if prim not in names:
                names.append(prim)
        # The model's own code first, library internals (flax, jax) after.
        lines_sorted = sorted(by_line, key=lambda src: "site-packages" in src)
        shown = lines_sorted[:12]
        lines.append("  through:")
        lines += [f"    {src}: {', '.join(by_line[src])}" for src in shown]
        if len(lines_sorted) > len(shown):
            lines.append(f"    ... {len(lines_sorted) - len(shown)} more source lines")
        return "\n".join(lines)


def member_key(member: Member) -> str:
    """``'path:axis'``, with the positions when the group holds only part of the axis
    (``[a:b]`` for a contiguous slice, ``[a:b:step]xM`` for M positions per channel)."""
    base = f"{member.path}:{member.axis}"
    if member.is_whole_axis:
        return base
    m = member.index_map
    first, last = int(m[0, 0]), int(m[-1, 0]) + 1
    if m.shape[1] == 1 and np.all(np.diff(m[:, 0]) == 1):
        return f"{base}[{first}:{last}]"
    step = int(m[1, 0] - m[0, 0]) if m.shape[0] > 1 else 1
    return f"{base}[{first}:{last}:{step}]x{m.shape[1]}"


def _naming_member(members: Tuple[Member, ...], rank: Callable[[Member], int]) -> Member:
    """The member a group is named after: the first trained kernel whose LAST axis holds the
    group (a Flax conv or dense producing the channels), else the first trained parameter,
    else the first member. Members come in parameter-path order, so this is deterministic."""
    trained = [m for m in members if m.path.split("/")[0] == "params"] or list(members)
    produced = [m for m in trained if rank(m) >= 2 and m.axis == rank(m) - 1]
    return (produced or trained)[0]


def assign_keys(groups: List["ChannelGroup"], rank: Callable[[Member], int]) -> None:
    """Gives every group its ``key``: readable, derived from member paths only (so a saved
    keep-set survives re-analysis even if group positions change), unique within the
    analysis: groups that would share a name get ``#2``, ``#3``... in the order of all
    their members' names. ``rank(member)``: the number of axes of the member's parameter."""
    by_name: Dict[str, List["ChannelGroup"]] = {}
    for g in groups:
        by_name.setdefault(member_key(_naming_member(g.members, rank)), []).append(g)
    for name, named in by_name.items():
        named.sort(key=lambda g: [member_key(m) for m in g.members])
        for k, g in enumerate(named):
            g.key = name if k == 0 else f"{name}#{k + 1}"


class GroupAnalysis:
    """The solved channel types of a traced model; see the module docstring."""

    def __init__(self, traced: Traced, interp: ChannelInterpreter, scope: Scope,
                 param_types: Dict[int, Tuple[Layout, ...]]):
        self.traced = traced
        self.interp = interp
        self.types = interp.types
        self.scope = scope
        self.unsupported = {name: [source_line(e) for e in eqns]
                            for name, eqns in interp.unsupported.items()}
        self._ops: Optional[Dict[int, List[Tuple[str, str]]]] = None
        self.groups: List[ChannelGroup] = self._collect(param_types)
        self._by_node = {g.node: g.id for g in self.groups}

    def _collect(self, param_types) -> List[ChannelGroup]:
        types = self.types
        members: Dict[int, List[Member]] = {}
        for index, axes in param_types.items():
            path = self.traced.in_paths[index]
            shape = shape_of(self.traced.jaxpr.invars[index])
            for axis, layout in enumerate(axes):
                for node, index_map in types.positions(layout).items():
                    members.setdefault(node, []).append(
                        Member(path, axis, index_map, index, shape[axis]))
        groups = []
        for node, mems in members.items():
            reason = types.reason[node]
            if reason is not None and reason.kind in NOT_CHANNELS:
                continue
            groups.append(ChannelGroup(len(groups), types.node_size[node], tuple(mems),
                                       reason is None,
                                       None if reason is None else reason.describe(), node,
                                       self))
        invars = self.traced.jaxpr.invars
        assign_keys(groups, lambda m: len(shape_of(invars[m.param_index])))
        return groups

    # ------------------------------------------------------------ look-ups
    def group_id(self, node: int) -> Optional[int]:
        return self._by_node.get(self.types.find(node))

    def prunable(self) -> List[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def var_axis_types(self, var, scope: Optional[Scope] = None) -> Tuple[Layout, ...]:
        """Resolved layouts of every axis of a jaxpr variable in a scope."""
        scope = scope or self.scope
        return tuple(self.types.resolve(t) for t in scope.env[var])

    def axis_layout(self, var, axis: int, scope: Optional[Scope] = None) -> Layout:
        return self.types.resolve((scope or self.scope).env[var][axis])

    def axis_groups(self, var, axis: int, scope: Optional[Scope] = None
                    ) -> List[Tuple[Optional[int], np.ndarray]]:
        """``[(group id or None, index map)]`` for axis ``axis`` of ``var``."""
        layout = (scope or self.scope).env[var][axis]
        return [(self._by_node.get(node), pos)
                for node, pos in self.types.positions(layout).items()]

    def axis_size(self, layout: Layout, sizes: Dict[int, object]):
        """Axis size when group ``g`` keeps ``sizes[g]`` channels (missing: full size);
        works with ints and with traced JAX scalars."""
        layout = self.types.resolve(layout)
        if isinstance(layout, int):
            gid = self._by_node.get(layout)
            if gid is not None and gid in sizes:
                return sizes[gid]
            return self.types.node_size[layout]
        values = [self.axis_size(p, sizes) for p in
                  (layout.parts if isinstance(layout, Concat) else layout.factors)]
        total = values[0]
        for v in values[1:]:
            total = total + v if isinstance(layout, Concat) else total * v
        return total

    def ops_of(self, group_id: int) -> List[Tuple[str, str]]:
        if self._ops is None:
            self._ops = self._index_ops()
        return self._ops.get(group_id, [])

    def _index_ops(self) -> Dict[int, List[Tuple[str, str]]]:
        found: Dict[int, Dict[int, object]] = {}
        leaves, by_node = self.types.leaves, self._by_node

        sources: Dict[int, str] = {}

        def visit(scope: Scope, outer: str):
            for i, eqn in enumerate(scope.jaxpr.eqns):
                src = None
                for atom in list(eqn.invars) + list(eqn.outvars):
                    axes = scope.env.get(atom) if not hasattr(atom, "val") else None
                    for layout in axes or ():
                        for node in leaves(layout):
                            gid = by_node.get(node)
                            if gid is not None:
                                if src is None:
                                    src = source_line(eqn)
                                    if src == "unknown source":
                                        src = outer
                                    sources[id(eqn)] = src
                                found.setdefault(gid, {})[id(eqn)] = eqn
                children = scope.children.get(i, ())
                if children:
                    here = src or source_line(eqn)
                    for child in children:
                        visit(child, outer if here == "unknown source" else here)

        visit(self.scope, "unknown source")
        return {gid: [(e.primitive.name, sources[key]) for key, e in eqns.items()]
                for gid, eqns in found.items()}

    def summary(self) -> str:
        n = len(self.prunable())
        return (f"{len(self.groups)} channel groups, {n} prunable"
                + (f"; unsupported primitives: {sorted(self.unsupported)}"
                   if self.unsupported else ""))


def analyze_traced(traced: Traced) -> GroupAnalysis:
    interp = ChannelInterpreter()
    in_types, param_types = [], {}
    for index, (atom, is_param) in enumerate(zip(traced.jaxpr.invars, traced.is_param)):
        shape = shape_of(atom)
        if is_param:
            axes = interp.fresh(shape)
            param_types[index] = axes
        else:
            axes = interp.fresh(shape, Reason(
                "input", f"reaches the model input '{traced.in_paths[index]}'"))
        in_types.append(axes)
    outs, scope = interp.run(traced.closed_jaxpr, in_types)
    for k, (atom, axes) in enumerate(zip(traced.jaxpr.outvars, outs)):
        interp.fix_all(axes, "output", f"reaches the model output (output {k})")
    return GroupAnalysis(traced, interp, scope, param_types)


def analyze(fn: Callable, variables, *inputs) -> GroupAnalysis:
    """Traces ``fn(variables, *inputs)`` and solves its channel groups."""
    return analyze_traced(trace(fn, variables, *inputs))
