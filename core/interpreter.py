"""The channel-type interpreter: walks a jaxpr and applies one rule per primitive.

Written the way JAX's own transforms are: a rule table keyed by primitive (``RULES``),
filled by the rule modules (``core.rules_compute``, ``core.rules_layout``) with helpers
that register ``Primitive`` objects and whole ``core.primitives`` categories at once (never
names: a renamed primitive is then an import error, not a rule that silently stops firing).
A rule receives the equation and the layouts of its operands (one ``core.channel_types``
layout per axis) and returns the layouts of its results, unifying whatever the primitive
ties together.

A primitive without a rule never crashes the analysis: every axis it touches is fixed
(not prunable), its results get fresh fixed axes, and ONE ``UnsupportedPrimitiveWarning``
per primitive names it and the source line of its first occurrence.

Sub-jaxprs are interpreted in child ``Scope``s: the same nested jaxpr object (a jitted
``relu`` called a hundred times) gets one scope per call, so each call site keeps its own
types. ``Scope.env`` maps every variable of its jaxpr to its per-axis layouts and
``Scope.children[i]`` holds the scopes of the sub-jaxprs of equation ``i``, in the order of
``core.trace.sub_jaxprs`` (the numbering of equation paths): a rewriter
that walks the same jaxprs can ask for the type of any variable at any depth.
"""
import dataclasses
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from jax.extend import core as jcore
from jax.extend.core import Primitive

from core import primitives as P
from core.channel_types import ChannelTypes, Layout, Reason
from core.trace import shape_of, sub_jaxprs

AxisTypes = Tuple[Layout, ...]
Rule = Callable[["ChannelInterpreter", object, List[AxisTypes]], List[AxisTypes]]

RULES: Dict[Primitive, Rule] = {}


class UnsupportedPrimitiveWarning(UserWarning):
    """A primitive without a channel rule: the axes it touches were made non-prunable."""


def register_category(keys: Union[P.Key, Sequence[P.Key]], rule: Rule) -> None:
    """Installs ``rule`` for primitives and whole ``core.primitives`` categories
    (``P.ELEMENTWISE_UNARY``, ``P.SCATTERS``...). A primitive given a second rule is an
    error, so the import order of the rule modules never decides which rule applies."""
    keys = [keys] if isinstance(keys, (Primitive, frozenset)) else list(keys)
    table = P.rule_table({key: rule for key in keys})
    for prim in table:
        if prim in RULES:
            raise ValueError(f"channel rules: primitive '{prim.name}' registered twice "
                             f"({RULES[prim].__name__} and {rule.__name__})")
    RULES.update(table)


def register(*keys: P.Key):
    """Decorator: ``@register(P.reshape_p)`` or ``@register(P.SCATTERS)`` installs a rule for
    primitives or categories given as ``Primitive`` objects (never names)."""
    def wrap(rule: Rule) -> Rule:
        register_category(keys, rule)
        return rule
    return wrap


def rule_for(primitive: Primitive) -> Optional[Rule]:
    return RULES.get(primitive)


@dataclasses.dataclass
class Scope:
    """One interpreted jaxpr: its variables' layouts and the scopes nested in it."""
    jaxpr: jcore.Jaxpr
    env: Dict[jcore.Var, AxisTypes]
    children: Dict[int, List["Scope"]] = dataclasses.field(default_factory=dict)
    parent: Optional["Scope"] = None
    eqn_index: Optional[int] = None     # index, in parent.jaxpr, of the equation that called it

    def types(self, atom) -> AxisTypes:
        return self.env[atom]


class ChannelInterpreter:
    """Runs the rule table over a closed jaxpr; holds the union-find and the scopes."""

    def __init__(self, types: Optional[ChannelTypes] = None, rules: Dict[Primitive, Rule] = None):
        self.types = types or ChannelTypes()
        self.rules = RULES if rules is None else rules
        self.unsupported: Dict[str, List] = {}
        self.scope: Optional[Scope] = None
        self.eqn_index: Optional[int] = None
        self.callers: Tuple = ()           # equations whose sub-jaxprs are being walked

    # -------------------------------------------------------- rule helpers
    def new(self, size: int, reason: Optional[Reason] = None) -> int:
        return self.types.new(size, reason)

    def fresh(self, shape: Sequence[int], reason: Optional[Reason] = None) -> AxisTypes:
        new = self.types.new
        return tuple(new(n, reason) for n in shape)

    def reason(self, kind: str, message: str, eqn=None) -> Reason:
        return Reason(kind, message, eqn, self.callers)

    def unify(self, a: Layout, b: Layout, eqn=None) -> None:
        if a is not b:
            self.types.unify(a, b, eqn, self.callers)

    def unify_all(self, a: AxisTypes, b: AxisTypes, eqn=None) -> None:
        for x, y in zip(a, b):
            if x is not y:
                self.types.unify(x, y, eqn, self.callers)

    def fix(self, layout: Layout, kind: str, message: str, eqn=None) -> None:
        self.types.fix(layout, Reason(kind, message, eqn, self.callers))

    def fix_all(self, axes: AxisTypes, kind: str, message: str, eqn=None) -> None:
        reason = Reason(kind, message, eqn, self.callers)
        for layout in axes:
            self.types.fix(layout, reason)

    def read(self, env, atom) -> AxisTypes:
        if isinstance(atom, jcore.Literal):
            return self.fresh(shape_of(atom))
        return env[atom]

    # ------------------------------------------------------------- walking
    def run(self, closed: jcore.ClosedJaxpr, in_types: Sequence[AxisTypes],
            parent: Optional[Scope] = None, eqn_index: Optional[int] = None
            ) -> Tuple[List[AxisTypes], Scope]:
        """Interprets ``closed`` with the given invar layouts; constvars get fresh axes."""
        jaxpr = closed.jaxpr
        scope = Scope(jaxpr, {}, parent=parent, eqn_index=eqn_index)
        env = scope.env
        for v in jaxpr.constvars:
            env[v] = self.fresh(shape_of(v))
        for v, t in zip(jaxpr.invars, in_types):
            env[v] = t
        saved = self.scope, self.eqn_index
        self.scope = scope
        rules, read = self.rules, self.read
        for i, eqn in enumerate(jaxpr.eqns):
            self.eqn_index = i
            ins = [read(env, x) for x in eqn.invars]
            rule = rules.get(eqn.primitive)
            outs = rule(self, eqn, ins) if rule is not None else self.default_rule(eqn, ins)
            for v, t in zip(eqn.outvars, outs):
                env[v] = t
            if len(scope.children.get(i, ())) > 1:
                scope.children[i] = _in_param_order(eqn, scope.children[i])
        self.scope, self.eqn_index = saved
        return [read(env, v) for v in jaxpr.outvars], scope

    def call(self, closed: jcore.ClosedJaxpr, in_types: Sequence[AxisTypes]
             ) -> List[AxisTypes]:
        """For rules of call-like primitives: interprets a sub-jaxpr of the current
        equation in a child scope and returns its output layouts."""
        scope, index = self.scope, self.eqn_index
        saved = self.callers
        self.callers = saved + (scope.jaxpr.eqns[index],)
        outs, child = self.run(closed, in_types, scope, index)
        self.callers = saved
        scope.children.setdefault(index, []).append(child)
        return outs

    def default_rule(self, eqn, ins: List[AxisTypes]) -> List[AxisTypes]:
        """Conservative answer for a primitive without a rule: nothing it touches prunes."""
        name = eqn.primitive.name
        first = name not in self.unsupported
        self.unsupported.setdefault(name, []).append(eqn)
        reason = self.reason("unsupported", f"unsupported primitive '{name}'", eqn)
        if first:
            warnings.warn(
                f"channel groups: {reason.describe()}; the axes it touches are treated as "
                f"not prunable", UnsupportedPrimitiveWarning, stacklevel=2)
        for axes in ins:
            for layout in axes:
                self.types.fix(layout, reason)
        return [self.fresh(shape_of(v), reason) for v in eqn.outvars]


def _in_param_order(eqn, children: List[Scope]) -> List[Scope]:
    """Child scopes in the order of ``core.trace.sub_jaxprs(eqn)``, whatever order a rule
    entered them in (``while`` walks its body before its condition): ``children[k]`` is
    then the k-th sub-jaxpr, the numbering equation paths use."""
    order = [s.jaxpr for s in sub_jaxprs(eqn)]
    taken = set()

    def position(child: Scope) -> int:
        for k, jaxpr in enumerate(order):
            if jaxpr is child.jaxpr and k not in taken:
                taken.add(k)
                return k
        return len(order)

    ranked = [(position(c), n) for n, c in enumerate(children)]
    return [children[n] for _, n in sorted(ranked)]
