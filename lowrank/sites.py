"""Which parameters of a traced model can be factorized, and at which equation.

A site is a parameter (by path) whose ONLY use, after following it into the sub-jaxprs
of call-like equations (``jit``, ``custom_jvp_call``, ``remat``... which
``core.rewrite.evaluate`` inlines), is the kernel operand of a linear equation that has a
rule in ``lowrank.kernels.RULES``. A parameter that is shared (tied embeddings), returned,
or also read by anything else is left alone: replacing it by two factors would change
those other uses. Parameters that reach a linear equation but are refused get a reason.
"""
import dataclasses
from typing import Dict, List, Tuple

from jax.extend import core as jcore

from core import trace as trace_lib
from lowrank.kernels import RULES, Geometry


@dataclasses.dataclass
class Site:
    """A factorizable kernel: parameter ``path`` is operand ``operand`` of ``eqn``."""
    path: str
    eqn_path: Tuple[int, ...]
    eqn: object = dataclasses.field(repr=False)
    operand: int
    geometry: Geometry

    @property
    def primitive(self) -> str:
        return self.eqn.primitive.name

    @property
    def rule(self):
        return RULES[self.eqn.primitive]

    @property
    def source(self) -> str:
        return trace_lib.source_line(self.eqn)


def _uses(traced: trace_lib.Traced) -> Dict[str, List]:
    """Parameter path -> its uses ``(eqn_path, eqn, operand index)`` (None: escapes as an
    output), call equations followed into their sub-jaxprs."""
    uses: Dict[str, List] = {p: [] for p, _ in traced.param_invars()}

    def walk(jaxpr, origin: Dict[jcore.Var, str], prefix):
        for i, eqn in enumerate(jaxpr.eqns):
            path = prefix + (i,)
            sub = trace_lib.call_jaxpr(eqn)
            if sub is not None and len(sub.jaxpr.invars) == len(eqn.invars):
                inner = {sv: origin[v] for v, sv in zip(eqn.invars, sub.jaxpr.invars)
                         if isinstance(v, jcore.Var) and v in origin}
                walk(sub.jaxpr, inner, path + (0,))
                continue
            for k, atom in enumerate(eqn.invars):
                if isinstance(atom, jcore.Var) and atom in origin:
                    uses[origin[atom]].append((path, eqn, k))
        for atom in jaxpr.outvars:
            if isinstance(atom, jcore.Var) and atom in origin:
                uses[origin[atom]].append(None)

    walk(traced.jaxpr, {v: p for p, v in traced.param_invars()}, ())
    return uses


def find_sites(traced: trace_lib.Traced) -> Tuple[List[Site], Dict[str, str]]:
    """(sites in program order, {param path: why it is not a site}) for params that feed a
    linear equation but cannot be factorized."""
    sites, refused = [], {}
    param_vars = {v for _, v in traced.param_invars()}
    for path, uses in _uses(traced).items():
        linear = [u for u in uses if u is not None and u[1].primitive in RULES]
        if not linear:
            continue
        if len(uses) != 1:
            refused[path] = f"used {len(uses)} times (shared or read by other equations)"
            continue
        eqn_path, eqn, k = linear[0]
        if len(eqn.invars) == 2 and eqn.invars[1 - k] in param_vars:
            refused[path] = "both operands are parameters"
            continue
        if len(eqn.invars[k].aval.shape) < 2:
            refused[path] = "kernel has fewer than two dimensions"
            continue
        geometry, reason = RULES[eqn.primitive].geometry(eqn, k)
        if geometry is None:
            refused[path] = reason
            continue
        sites.append(Site(path, eqn_path, eqn, k, geometry))
    sites.sort(key=lambda s: s.eqn_path)
    return sites, refused
