"""FLOPs, parameters and peak activation memory of any JAX model, from its jaxpr, exact and
as a differentiable function of how many channels each group keeps.

Pruning trades accuracy against cost, and the loss that drives it needs the cost of the
*narrower* model as a smooth function of kept-channel counts. Both come from one walk:
every equation's cost is a product of axis sizes, and every axis size is a polynomial in
the group sizes (its channel layout: a group's size, a sum for a Concat, a product for a
Product, a constant for space or batch). ``count`` evaluates at full size with plain ints;
``CostModel`` compiles the same polynomials into arrays that JAX can differentiate, and at
integer sizes they give exactly the cost of the physically pruned model.

Conventions:
- FLOPs: 1 multiply-accumulate = 2 FLOPs. ``matmul_flops`` counts conv_general_dilated
  and dot_general (the usual "FLOPs of a network"): conv = 2 * output elements * kernel
  window * input channels per group, padding positions included (``exclude_padding=True``
  leaves out taps that fall on padding, as XLA's ``cost_analysis`` does). ``other_flops``
  counts 1 per output element of arithmetic elementwise ops and 1 per input element of
  reductions. ``flops = matmul_flops + other_flops``.
- Scan bodies count ``length`` times, while bodies once (trip count unknown), cond the
  most expensive branch.
- Params: elements of the ``'params'`` collection when ``variables`` has one (batch stats
  are state, counted in ``state``), otherwise of every leaf of ``variables``.
- Peak activation memory: a liveness walk in program order with no buffer reuse or
  fusion: model inputs and every intermediate are live from definition to last use;
  parameters are not activations. A sub-jaxpr's outputs are counted inside it until the
  call returns.
"""
import dataclasses
from typing import Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from core.channel_groups import GroupAnalysis, analyze_traced
from core.channel_types import Concat
from core import primitives as P
from core.interpreter import Scope
from core.trace import shape_of, source_line, trace

Poly = Dict[Tuple[int, ...], int]   # sorted group ids -> coefficient


@dataclasses.dataclass
class EquationCost:
    """Cost of one equation. Nested equations are listed too (before the equation that
    calls them); ``path`` alternates equation and sub-jaxpr indices from the top:
    ``(3, 0, 1)`` is equation 1 of the first sub-jaxpr of top-level equation 3."""
    path: Tuple[int, ...]
    primitive: str
    flops: int
    kind: str                       # 'matmul', 'elementwise', 'reduction' or 'other'
    out_bytes: int
    live_bytes: int                 # activation bytes live right after it ran
    in_groups: Tuple[int, ...] = ()   # matmul: groups on the contracted / input-feature axes
    out_groups: Tuple[int, ...] = ()  # matmul: groups on the kernel's output axes
    eqn: object = dataclasses.field(default=None, repr=False)

    @property
    def source(self) -> str:
        return source_line(self.eqn)


@dataclasses.dataclass
class CostReport:
    flops: int
    matmul_flops: int
    other_flops: int
    params: int
    state: int
    param_bytes: int
    peak_activation_bytes: int
    equations: List[EquationCost]
    analysis: GroupAnalysis = dataclasses.field(repr=False)
    exclude_padding: bool = False

    def matmuls(self) -> List[EquationCost]:
        return [e for e in self.equations if e.kind == "matmul"]

    def cost_model(self) -> "CostModel":
        return CostModel(self.analysis, self.exclude_padding)


# ------------------------------------------------------------------ polynomials
def _poly_mul(a: Poly, b: Poly) -> Poly:
    out: Poly = {}
    for ka, ca in a.items():
        for kb, cb in b.items():
            key = tuple(sorted(ka + kb))
            out[key] = out.get(key, 0) + ca * cb
    return out


def _poly_add_into(acc: Poly, p: Poly, scale: int = 1) -> None:
    for k, c in p.items():
        acc[k] = acc.get(k, 0) + c * scale


class _Polys:
    """Axis layouts -> polynomials in the group sizes (memoized per node)."""

    def __init__(self, analysis: GroupAnalysis):
        self.a = analysis
        self.cache: Dict[int, Poly] = {}

    def layout(self, layout) -> Poly:
        types = self.a.types
        layout = types.resolve(layout)
        if isinstance(layout, int):
            p = self.cache.get(layout)
            if p is None:
                gid = self.a.group_id(layout)
                p = {(gid,): 1} if gid is not None else {(): types.node_size[layout]}
                self.cache[layout] = p
            return p
        parts = layout.parts if isinstance(layout, Concat) else layout.factors
        if isinstance(layout, Concat):
            out: Poly = {}
            for part in parts:
                _poly_add_into(out, self.layout(part))
            return out
        out = {(): 1}
        for f in parts:
            out = _poly_mul(out, self.layout(f))
        return out

    def prod(self, layouts: Sequence, const: int = 1) -> Poly:
        out: Poly = {(): const}
        for layout in layouts:
            out = _poly_mul(out, self.layout(layout))
        return out


# ---------------------------------------------------------------- the walk
def _conv_geometry(eqn, exclude_padding: bool) -> int:
    """Spatial factor of a conv's MACs: out positions x kernel taps, or only the
    (position, tap) pairs that land on real input when ``exclude_padding``."""
    p = eqn.params
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    lhs, rhs, out = shape_of(eqn.invars[0]), shape_of(eqn.invars[1]), shape_of(eqn.outvars[0])
    total = 1
    for k in range(len(lhs_spec) - 2):
        n_in, n_k, n_out = lhs[lhs_spec[2 + k]], rhs[rhs_spec[2 + k]], out[out_spec[2 + k]]
        if not exclude_padding:
            total *= n_out * n_k
            continue
        stride = p["window_strides"][k]
        lo = p["padding"][k][0]
        ldil = (p.get("lhs_dilation") or (1,) * 8)[k]
        rdil = (p.get("rhs_dilation") or (1,) * 8)[k]
        pos = (np.arange(n_out)[:, None] * stride + np.arange(n_k)[None, :] * rdil - lo)
        valid = (pos >= 0) & (pos <= (n_in - 1) * ldil) & (pos % ldil == 0)
        total *= int(valid.sum())
    return total


def _itemsize(atom) -> int:
    dtype = getattr(atom.aval, "dtype", None)
    try:
        return np.dtype(dtype).itemsize
    except TypeError:
        return 4


# ------------------------------------------------------------ FLOPs per primitive
def _conv_flops(walker: "_Walker", env, eqn, mult: int):
    lhs_spec, rhs_spec, out_spec = eqn.params["dimension_numbers"]
    rhs, out = env[eqn.invars[1]], env[eqn.outvars[0]]
    geometry = _conv_geometry(eqn, walker.exclude_padding)
    rhs_shape = shape_of(eqn.invars[1])
    batch = shape_of(eqn.outvars[0])[out_spec[0]]
    flops = 2 * mult * geometry * batch * rhs_shape[rhs_spec[0]] * rhs_shape[rhs_spec[1]]
    polys = walker.polys
    poly = (polys.prod((out[out_spec[0]], rhs[rhs_spec[0]], rhs[rhs_spec[1]]),
                       2 * mult * geometry) if polys else None)
    return "matmul", flops, poly, (rhs[rhs_spec[1]],), (rhs[rhs_spec[0]],)


def _dot_flops(walker: "_Walker", env, eqn, mult: int):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = env.get(eqn.invars[0]), env.get(eqn.invars[1])
    lshape, rshape = shape_of(eqn.invars[0]), shape_of(eqn.invars[1])
    free_r = [d for d in range(len(rshape)) if d not in set(rc) | set(rb)]
    flops = 2 * mult * int(np.prod(lshape, dtype=np.int64)) * int(
        np.prod([rshape[d] for d in free_r], dtype=np.int64))
    poly = None
    if walker.polys and lhs is not None and rhs is not None:
        poly = walker.polys.prod(list(lhs) + [rhs[d] for d in free_r], 2 * mult)
    ins = tuple(lhs[d] for d in lc) if lhs is not None else ()
    outs = tuple(rhs[d] for d in free_r) if rhs is not None else ()
    return "matmul", flops, poly, ins, outs


def _per_element(kind: str, counted: str):
    """1 FLOP per element of the output (``counted='out'``) or of the first operand."""
    def rule(walker: "_Walker", env, eqn, mult: int):
        atom = eqn.outvars[0] if counted == "out" else eqn.invars[0]
        flops = mult * int(np.prod(shape_of(atom), dtype=np.int64))
        axes = env.get(atom)
        poly = walker.polys.prod(axes, mult) if walker.polys and axes is not None else None
        return kind, flops, poly, (), ()
    return rule


# Primitives without a rule cost nothing ('other'): layout, casts, copies, control flow
# (their bodies are walked), cumulative ops.
FLOP_RULES = P.rule_table({
    P.conv_general_dilated_p: _conv_flops,
    P.dot_general_p: _dot_flops,
    P.ARITHMETIC: _per_element("elementwise", "out"),
    P.REDUCTIONS | P.WINDOW_REDUCTIONS: _per_element("reduction", "in"),
})


class _Walker:
    def __init__(self, analysis: GroupAnalysis, exclude_padding: bool, want_polys: bool):
        self.a = analysis
        self.exclude_padding = exclude_padding
        self.polys = _Polys(analysis) if want_polys else None
        self.equations: List[EquationCost] = []
        self.matmul_flops = 0
        self.other_flops = 0
        self.matmul_poly: Poly = {}
        self.other_poly: Poly = {}
        self.live = 0
        self.peak = 0
        self.step = 0
        self.mem_events: List[Tuple[int, Poly, int]] = []   # (step, poly, sign)
        self.allocated = set()

    # memory ---------------------------------------------------------------
    def _alloc(self, scope: Scope, atom) -> None:
        self.allocated.add((id(scope), atom))
        size = int(np.prod(shape_of(atom), dtype=np.int64)) * _itemsize(atom)
        self.live += size
        if self.polys is not None:
            axes = scope.env.get(atom)
            if axes is not None:
                self.mem_events.append((self.step, self.polys.prod(axes, _itemsize(atom)), 1))

    def _free(self, scope: Scope, atom) -> None:
        """Frees a value this walk allocated (parameters, constants and a sub-jaxpr's
        invars, which alias its caller's values, never were)."""
        key = (id(scope), atom)
        if key not in self.allocated:
            return
        self.allocated.discard(key)
        size = int(np.prod(shape_of(atom), dtype=np.int64)) * _itemsize(atom)
        self.live -= size
        if self.polys is not None:
            axes = scope.env.get(atom)
            if axes is not None:
                self.mem_events.append((self.step, self.polys.prod(axes, _itemsize(atom)), -1))

    # equations ------------------------------------------------------------
    def _equation_flops(self, scope: Scope, eqn, mult: int):
        """(kind, flops, polynomial, input groups, output groups) by ``FLOP_RULES``."""
        rule = FLOP_RULES.get(eqn.primitive)
        return rule(self, scope.env, eqn, mult) if rule else ("other", 0, None, (), ())

    def _groups(self, layouts) -> Tuple[int, ...]:
        found = []
        for layout in layouts:
            for node in self.a.types.leaves(layout):
                gid = self.a.group_id(node)
                if gid is not None and gid not in found:
                    found.append(gid)
        return tuple(found)

    def walk(self, scope: Scope, mult: int = 1, path: Tuple[int, ...] = (),
             count_flops: bool = True) -> None:
        jaxpr = scope.jaxpr
        last_use: Dict[jcore.Var, int] = {}
        for i, eqn in enumerate(jaxpr.eqns):
            for atom in eqn.invars:
                if isinstance(atom, jcore.Var):
                    last_use[atom] = i
        end = len(jaxpr.eqns)
        for atom in jaxpr.outvars:
            if isinstance(atom, jcore.Var):
                last_use[atom] = end
        dying: Dict[int, List] = {}
        for atom, i in last_use.items():
            dying.setdefault(i, []).append(atom)
        for i, eqn in enumerate(jaxpr.eqns):
            children = scope.children.get(i, ())
            here = path + (i,)
            if children:
                self._walk_children(eqn, children, mult, here, count_flops)
            self.step += 1
            kind, flops, poly, ins, outs = self._equation_flops(scope, eqn, mult)
            if not count_flops:
                flops, poly = 0, None
            if kind == "matmul":
                self.matmul_flops += flops
                if poly:
                    _poly_add_into(self.matmul_poly, poly)
            elif flops:
                self.other_flops += flops
                if poly:
                    _poly_add_into(self.other_poly, poly)
            out_bytes = 0
            for atom in eqn.outvars:
                if isinstance(atom, jcore.Var) and not isinstance(atom, jcore.DropVar):
                    self._alloc(scope, atom)
                    out_bytes += int(np.prod(shape_of(atom), dtype=np.int64)) * _itemsize(atom)
            self.peak = max(self.peak, self.live)
            self.equations.append(EquationCost(
                here, eqn.primitive.name, flops, kind, out_bytes, self.live,
                self._groups(ins), self._groups(outs), eqn))
            self.step += 1
            for atom in dying.get(i, ()):
                self._free(scope, atom)
            for atom in eqn.outvars:   # results nobody reads
                if (isinstance(atom, jcore.Var) and not isinstance(atom, jcore.DropVar)
                        and atom not in last_use):
                    self._free(scope, atom)
        # Outputs of a sub-jaxpr are handed to the caller, which counts them from now on.
        if scope.parent is not None:
            for atom in jaxpr.outvars:
                if isinstance(atom, jcore.Var):
                    self._free(scope, atom)

    def _walk_children(self, eqn, children, mult, path, count_flops):
        rule = BODY_RULES.get(eqn.primitive, _walk_each)
        rule(self, eqn, children, mult, path, count_flops)


def _walk_each(walker: _Walker, eqn, children, mult, path, count_flops, times: int = 1):
    """Bodies of calls and while loops count once (a while's trip count is unknown)."""
    for k, child in enumerate(children):
        walker.walk(child, mult * times, path + (k,), count_flops)


def _walk_scan(walker: _Walker, eqn, children, mult, path, count_flops):
    """A scan body counts ``length`` times."""
    _walk_each(walker, eqn, children, mult, path, count_flops, eqn.params["length"])


def _walk_cond(walker: _Walker, eqn, children, mult, path, count_flops):
    """A cond counts its most expensive branch (memory is walked in every branch)."""
    if not count_flops:
        return _walk_each(walker, eqn, children, mult, path, count_flops)
    costs = []
    for child in children:
        probe = _Walker(walker.a, walker.exclude_padding, False)
        probe.walk(child, mult)
        costs.append(probe.matmul_flops + probe.other_flops)
    best = int(np.argmax(costs))
    for k, child in enumerate(children):
        walker.walk(child, mult, path + (k,), count_flops and k == best)


BODY_RULES = P.rule_table({P.scan_p: _walk_scan, P.cond_p: _walk_cond})


# --------------------------------------------------------------------- public
def _param_indices(analysis: GroupAnalysis) -> Tuple[List[int], List[int]]:
    traced = analysis.traced
    params = [i for i, p in enumerate(traced.is_param) if p]
    in_params = [i for i in params if traced.in_paths[i].split("/")[0] == "params"]
    if not in_params:
        return params, []
    return in_params, [i for i in params if i not in in_params]


def count_analysis(analysis: GroupAnalysis, exclude_padding: bool = False) -> CostReport:
    walker = _Walker(analysis, exclude_padding, want_polys=False)
    traced = analysis.traced
    for index, atom in enumerate(traced.jaxpr.invars):
        if not traced.is_param[index]:
            walker._alloc(analysis.scope, atom)
    walker.peak = walker.live
    walker.walk(analysis.scope)
    params, state = _param_indices(analysis)
    invars = traced.jaxpr.invars
    n = lambda i: int(np.prod(shape_of(invars[i]), dtype=np.int64))
    return CostReport(
        walker.matmul_flops + walker.other_flops, walker.matmul_flops, walker.other_flops,
        sum(n(i) for i in params), sum(n(i) for i in state),
        sum(n(i) * _itemsize(invars[i]) for i in params), walker.peak, walker.equations,
        analysis, exclude_padding)


def count(fn, variables, *inputs, exclude_padding: bool = False) -> CostReport:
    """Exact FLOPs, params and peak activation memory of ``fn(variables, *inputs)``."""
    return count_analysis(analyze_traced(trace(fn, variables, *inputs)), exclude_padding)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Cost:
    flops: jnp.ndarray
    matmul_flops: jnp.ndarray
    other_flops: jnp.ndarray
    params: jnp.ndarray
    peak_activation_bytes: jnp.ndarray


class _Compiled:
    """A polynomial as arrays: ``sum_k coef[k] * prod_j s[factors[k, j]]``."""

    def __init__(self, poly: Poly, n_groups: int):
        items = [(k, c) for k, c in poly.items() if c]
        degree = max([len(k) for k, _ in items] + [1])
        self.coef = np.array([c for _, c in items] or [0], np.float64)
        factors = np.full((max(len(items), 1), degree), n_groups, np.int32)
        for row, (key, _) in enumerate(items):
            factors[row, :len(key)] = key
        self.factors = factors

    def __call__(self, s_ext):
        return jnp.sum(jnp.asarray(self.coef, s_ext.dtype)
                       * jnp.prod(s_ext[self.factors], axis=1))


class CostModel:
    """Differentiable cost: ``model(sizes)`` with ``sizes[g]`` = kept channels of group g
    (an array over ``analysis.groups`` or a dict ``{group_id: size}``; missing groups
    stay full). Equal to the exact count of the physically pruned model at integer sizes."""

    def __init__(self, analysis: GroupAnalysis, exclude_padding: bool = False):
        self.analysis = analysis
        self.groups = analysis.groups
        self.full_sizes = np.array([g.size for g in self.groups], np.float32)
        walker = _Walker(analysis, exclude_padding, want_polys=True)
        traced = analysis.traced
        for index, atom in enumerate(traced.jaxpr.invars):
            if not traced.is_param[index]:
                walker._alloc(analysis.scope, atom)
        walker.walk(analysis.scope)
        n = len(self.groups)
        self._matmul = _Compiled(walker.matmul_poly, n)
        self._other = _Compiled(walker.other_poly, n)
        params: Poly = {}
        polys = walker.polys
        for index in _param_indices(analysis)[0]:
            _poly_add_into(params, polys.prod(analysis.scope.env[traced.jaxpr.invars[index]]))
        self._params = _Compiled(params, n)
        # Memory: live bytes after each step are a running sum of allocations and frees.
        steps = [e[0] for e in walker.mem_events]
        self._mem_terms = []
        for step, poly, sign in walker.mem_events:
            for key, c in poly.items():
                self._mem_terms.append((step, key, sign * c))
        degree = max([len(k) for _, k, _ in self._mem_terms] + [1])
        self._mem_step = np.array([t[0] for t in self._mem_terms], np.int32)
        self._mem_coef = np.array([t[2] for t in self._mem_terms], np.float64)
        self._mem_factors = np.full((len(self._mem_terms), degree), n, np.int32)
        for row, (_, key, _) in enumerate(self._mem_terms):
            self._mem_factors[row, :len(key)] = key
        self._n_steps = (max(steps) + 1) if steps else 1

        self._evaluate = jax.jit(self._cost)

    def sizes_array(self, sizes) -> jnp.ndarray:
        if isinstance(sizes, dict):
            if all(isinstance(v, (int, float, np.number)) for v in sizes.values()):
                arr = self.full_sizes.copy()
                arr[list(sizes)] = list(sizes.values())
                return jnp.asarray(arr)
            arr = jnp.asarray(self.full_sizes)
            for gid, value in sizes.items():
                arr = arr.at[gid].set(value)
            return arr
        return jnp.asarray(sizes, jnp.float32)

    def __call__(self, sizes=None) -> Cost:
        """Cost at ``sizes`` (default: full size); jitted, differentiable."""
        return self._evaluate(self.sizes_array(self.full_sizes if sizes is None else sizes))

    def _cost(self, s) -> Cost:
        s_ext = jnp.concatenate([s, jnp.ones((1,), s.dtype)])
        matmul, other = self._matmul(s_ext), self._other(s_ext)
        terms = jnp.asarray(self._mem_coef, s.dtype) * jnp.prod(s_ext[self._mem_factors], 1)
        per_step = jnp.zeros(self._n_steps, s.dtype).at[self._mem_step].add(terms)
        peak = jnp.max(jnp.cumsum(per_step))
        return Cost(matmul + other, matmul, other, self._params(s_ext), peak)


def cost_model(fn, variables, *inputs, exclude_padding: bool = False) -> CostModel:
    """The differentiable cost of ``fn(variables, *inputs)`` (see ``CostModel``)."""
    return CostModel(analyze_traced(trace(fn, variables, *inputs)), exclude_padding)
