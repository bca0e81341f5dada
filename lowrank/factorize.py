"""``factorize``: replace dense and conv kernels of ANY JAX model by two thin ones.

Steps, each in its own module: find the sites (``lowrank.sites``: parameters used only as
the kernel of one dot_general / conv_general_dilated), gather their input statistics on
calibration data (``lowrank.calibration``), choose ranks (given, or allocated under a
FLOPs or latency budget by ``lowrank.allocation`` from per-layer error curves), solve for
the factors (``lowrank.solvers``: truncated SVD or the data-aware closed form), optionally
refine them by training (``lowrank.learned``), and return a ``Factorized`` whose ``fn`` is
the original jaxpr re-evaluated with two equations per factorized kernel
(``lowrank.function``).

Example::

    out = factorize(fn, variables, x, budget=0.5, method="data", data=batches)
    out.fn(out.variables, x)         # half the FLOPs; jit / grad / export.to_onnx work
    print(out.summary())
"""
import dataclasses
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import jax
import numpy as np

from core import trace as trace_lib
from lowrank import allocation, calibration, solvers
from lowrank.function import FactoredFunction, LowRankKernel, kernels_at, replace_kernels
from lowrank.sites import Site, find_sites

METHODS = ("svd", "data", "learned")


@dataclasses.dataclass
class LayerReport:
    path: str
    primitive: str
    source: str
    groups: int
    m: int                   # input features per group (k*k*c_in/groups for a conv)
    n: int                   # outputs per group
    rank: int                # total intermediate width (groups x rank per group)
    full_rank: int
    macs: int
    macs_factorized: int
    error: float             # relative output error on the calibration data (weight error
    error_kind: str          # without data), measured before any learned refinement


@dataclasses.dataclass
class Factorized:
    fn: Callable
    variables: Any
    method: str
    layers: List[LayerReport]
    skipped: Dict[str, str]         # param path -> why it was not factorized
    budget: Optional[allocation.Budget] = None
    sites: List[Site] = dataclasses.field(default_factory=list, repr=False)
    original: Optional[FactoredFunction] = dataclasses.field(default=None, repr=False)
    refinement: Optional[dict] = None
    _flops_before: Optional[float] = dataclasses.field(default=None, repr=False)
    _count_original: Optional[Callable] = dataclasses.field(default=None, repr=False)

    @property
    def flops_before(self) -> float:
        """FLOPs of the original model (``core.cost``), counted on first use."""
        if self._flops_before is None:
            self._flops_before = float(self._count_original())
        return self._flops_before

    @property
    def flops_after(self) -> float:
        saved = sum(2 * (layer.macs - layer.macs_factorized) for layer in self.layers)
        return self.flops_before - saved

    def ranks(self) -> Dict[str, int]:
        return {layer.path: layer.rank for layer in self.layers}

    def summary(self) -> str:
        lines = [f"low-rank ({self.method}): {len(self.layers)} layers factorized"]
        if self._flops_before is not None or self._count_original is not None:
            lines[0] += (f", FLOPs {self.flops_before:.4g} -> {self.flops_after:.4g} "
                         f"({self.flops_before / self.flops_after:.2f}x fewer)")
        for layer in self.layers:
            lines.append(f"  {layer.path:48s} {layer.primitive:20s} {layer.m}x{layer.n}"
                         f"{'/g' + str(layer.groups) if layer.groups > 1 else ''} rank "
                         f"{layer.rank}/{layer.full_rank} {layer.error_kind} error "
                         f"{layer.error:.4f}  [{layer.source}]")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"method": self.method, "flops_before": self.flops_before,
                "flops_after": self.flops_after,
                "layers": [dataclasses.asdict(layer) for layer in self.layers],
                "skipped": self.skipped, "refinement": self.refinement}


def _select(sites: List[Site], include) -> List[Site]:
    if include is None:
        return sites
    if callable(include):
        return [s for s in sites if include(s.path)]
    wanted = set(include)
    return [s for s in sites if s.path in wanted]


def _kernel_matrix(site: Site, kernel) -> np.ndarray:
    return np.asarray(site.rule.kernel_matrices(site.eqn, site.operand, kernel), np.float64)


def factorize(fn: Callable, variables, *example_inputs,
              ranks: Optional[Dict[str, int]] = None,
              budget: Union[None, float, dict, allocation.Budget] = None,
              method: str = "data", data: Optional[Iterable] = None,
              include: Union[None, Sequence[str], Callable[[str], bool]] = None,
              rank_multiple: int = 1, eps: float = 1e-6, latency_model=None,
              learn: Optional[dict] = None, stats: Optional[dict] = None) -> Factorized:
    """Factorizes the dense / conv kernels of ``fn(variables, *example_inputs)``.

    ranks: ``{param path: total rank}`` (for a grouped conv, groups x rank per group;
      rounded up to a multiple of the groups). Or budget: keep at most this fraction of
      the model's FLOPs (``0.5``, ``{'flops': 0.5}``), or of its predicted latency
      (``{'latency': 0.5}`` with ``latency_model``); ranks are then allocated from
      per-layer error curves and layers that would not get cheaper are left alone.
    method: 'svd' (weights only), 'data' (closed form on ``data``) or 'learned' (the
      closed form, then trained to match the original layer outputs on ``data``;
      options in ``learn``, see ``lowrank.learned.refine``).
    data: calibration batches (arrays, or tuples of the model's inputs).
    include: which param paths may be factorized (list or predicate; default all).
    stats: precomputed ``lowrank.calibration.collect`` result, to reuse across calls.
    """
    data = _checked_arguments(method, ranks, budget, data, stats)
    traced = trace_lib.trace(fn, variables, *example_inputs)
    all_sites, skipped = find_sites(traced)
    sites = _select(all_sites, include)
    original = FactoredFunction(fn, variables, [s.path for s in all_sites])
    if stats is None and data:
        stats = calibration.collect(original, variables, data, [s.path for s in sites])
    grams = {p: st.gram for p, st in (stats or {}).items()}
    kernels = kernels_at(variables, [s.path for s in sites])
    matrices = {s.path: _kernel_matrix(s, kernels[s.path]) for s in sites}
    solve_method = "svd" if method == "svd" else "data"

    chosen_budget, flops_before = None, None
    if budget is not None:
        chosen_budget = allocation.Budget.of(budget)
        per_group, flops_before = _allocated_ranks(
            fn, variables, example_inputs, sites, matrices, grams, chosen_budget,
            solve_method, eps, rank_multiple, latency_model)
        for s in sites:
            if s.path not in per_group:
                skipped[s.path] = "left alone by the budget allocation"
    else:
        per_group = _requested_ranks(ranks, sites, skipped)

    layers, factors = [], {}
    for s in sites:
        if s.path in per_group:
            factors[s.path], layer = _factor_site(
                s, per_group[s.path], matrices[s.path], grams.get(s.path),
                kernels[s.path].dtype, solve_method, eps)
            layers.append(layer)

    from core import cost
    result = Factorized(_as_plain_function(original), replace_kernels(variables, factors),
                        method, layers, skipped, budget=chosen_budget, sites=sites,
                        original=original, _flops_before=flops_before,
                        _count_original=lambda: cost.count(fn, variables,
                                                           *example_inputs).flops)
    if method == "learned":
        from lowrank import learned
        result = learned.refine(result, variables, data, **(learn or {}))
    return result


def _checked_arguments(method: str, ranks, budget, data, stats) -> Optional[list]:
    """Refuses contradictory or incomplete options before any tracing; ``data`` as a list
    (it is iterated twice: calibration, then learned refinement)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if (ranks is None) == (budget is None):
        raise ValueError("give exactly one of ranks= or budget=")
    data = list(data) if data is not None else None
    if method != "svd" and not data and stats is None:
        raise ValueError(f"method {method!r} needs calibration data (data=...)")
    return data


def _allocated_ranks(fn, variables, example_inputs, sites: List[Site], matrices, grams,
                     budget: allocation.Budget, solve_method: str, eps: float,
                     rank_multiple: int, latency_model):
    """``({path: rank per group}, FLOPs before or None)``: ranks chosen from each site's
    error curve so the model costs at most ``budget.fraction`` of its FLOPs or latency;
    sites the allocation leaves alone (``None``: they would not get cheaper or are not worth
    it) are not in the result."""
    site_cost = (allocation.FlopsCost() if budget.metric == "flops" else
                 allocation.LatencyCost(_require(latency_model, budget)))
    total = site_cost.model(fn, variables, *example_inputs)
    options = []
    for s in sites:
        curve = solvers.error_curve(matrices[s.path], solve_method, grams.get(s.path), eps)
        options.append(allocation.site_options(s, curve, site_cost, rank_multiple))
    fixed = total - sum(float(o.costs[0]) for o in options)
    chosen = allocation.allocate(options, fixed, budget.fraction * total)
    per_group = {path: r for path, r in chosen.items() if r is not None}
    return per_group, (total if budget.metric == "flops" else None)


def _requested_ranks(ranks: Dict[str, int], sites: List[Site], skipped) -> Dict[str, int]:
    """``{path: rank per group}`` of the user's total ranks; a path that is no site of this
    model is an error saying why (``skipped`` holds the reasons ``find_sites`` gave)."""
    known = {s.path: s for s in sites}
    per_group = {}
    for path, r in ranks.items():
        if path not in known:
            why = skipped.get(path, "not a dense/conv kernel of this model")
            raise ValueError(f"cannot factorize {path!r}: {why}")
        per_group[path] = _per_group_rank(path, r, known[path].geometry)
    return per_group


def _factor_site(s: Site, rank: int, w: np.ndarray, gram, dtype, solve_method: str,
                 eps: float):
    """``(LowRankKernel, LayerReport)`` of one site at ``rank`` per group: the two factors
    in the kernel's dtype and layout, and the error measured before any refinement
    (on the calibration statistics when there are some, of the weights otherwise)."""
    a, b = solvers.solve(solve_method, w, gram, rank, eps)
    w0, w1 = s.rule.factor_arrays(s.eqn, s.operand, a.astype(np.float32), b.astype(np.float32))
    error, kind = ((solvers.output_error(w, a, b, gram), "output") if gram is not None
                   else (solvers.weight_error(w, a, b), "weight"))
    geo = s.geometry
    layer = LayerReport(s.path, s.primitive, s.source, geo.groups, geo.m, geo.n,
                        rank * geo.groups, geo.full_rank * geo.groups, geo.macs(),
                        geo.macs(rank), error, kind)
    return LowRankKernel(np.asarray(w0, dtype), np.asarray(w1, dtype)), layer


def _per_group_rank(path: str, rank, geo) -> int:
    """The rank per group of a requested total ``rank``, refusing what would silently do
    something else: -3 would slice to ``full - 3``, 0 drops the layer, 2.7 truncates."""
    full = geo.full_rank * geo.groups
    allowed = f"an integer in 1..{full} (the full rank of its {geo.m}x{geo.n}" + (
        f" kernel per group, times {geo.groups} groups)" if geo.groups > 1 else " kernel)")
    if isinstance(rank, (bool, np.bool_)) or not isinstance(rank, (int, np.integer)):
        raise TypeError(f"rank of {path!r} is {rank!r} ({type(rank).__name__}); "
                        f"it must be {allowed}")
    if not 1 <= int(rank) <= full:
        raise ValueError(f"rank of {path!r} is {int(rank)}; it must be {allowed}")
    return -(-int(rank) // geo.groups)


def _require(latency_model, budget):
    if latency_model is None:
        raise ValueError(f"a {budget.metric} budget needs latency_model=")
    return latency_model


def _as_plain_function(ff: FactoredFunction) -> Callable:
    def fn(variables, *inputs):
        return ff(variables, *inputs)
    fn.factored = ff
    return fn
