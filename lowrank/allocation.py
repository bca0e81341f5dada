"""Rank allocation: which rank each layer gets so the whole model meets a cost budget.

Every site has an error-versus-rank curve (``lowrank.solvers.error_curve``) and a cost at
each rank. Choosing one option per site (a rank, or "leave it alone") to minimize the sum
of relative output errors subject to ``fixed + sum(cost) <= budget`` is a multiple-choice
knapsack; it is solved exactly by dynamic programming over the cost discretized into
``resolution`` steps (costs rounded UP, so the true cost of the answer never exceeds the
budget). Ranks at which factorizing would not save cost are never offered.

Costs are pluggable (``SiteCost``): ``FlopsCost`` counts 2 x MACs; ``LatencyCost`` asks an
``export.latency_model.LatencyModel`` for the predicted time of the ops a site becomes.
"""
import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np

from lowrank.sites import Site


@dataclasses.dataclass
class Budget:
    """Keep at most ``fraction`` of the model's ``metric`` ('flops' or 'latency')."""
    fraction: float
    metric: str = "flops"

    @classmethod
    def of(cls, spec) -> "Budget":
        if isinstance(spec, Budget):
            return spec
        if isinstance(spec, (int, float)):
            return cls(float(spec))
        if isinstance(spec, dict) and len(spec) == 1:
            (metric, fraction), = spec.items()
            return cls(float(fraction), metric)
        raise ValueError(f"budget {spec!r}: give a fraction (0.5), {{'flops': 0.5}} or "
                         "{'latency': 0.5}")


@dataclasses.dataclass
class SiteOptions:
    """The choices for one site: ``ranks[i]`` per group (None = not factorized)."""
    path: str
    ranks: List[Optional[int]]
    costs: np.ndarray
    errors: np.ndarray


class FlopsCost:
    """FLOPs (2 x MACs) of a site at a rank; the model's total from ``core.cost``."""
    metric = "flops"

    def site(self, site: Site, rank_per_group: Optional[int]) -> float:
        return 2.0 * site.geometry.macs(rank_per_group)

    def model(self, fn, variables, *inputs) -> float:
        from core import cost
        return float(cost.count(fn, variables, *inputs).flops)


class LatencyCost:
    """Predicted latency (ms) from a ``LatencyModel``: a site costs the calibrated time of
    its op(s) (one conv/dense, or the two that replace it, plus the per-op overhead)."""
    metric = "latency"

    def __init__(self, latency_model):
        self.lm = latency_model

    def site(self, site: Site, rank_per_group: Optional[int]) -> float:
        from export import latency_model as lm_lib
        ops = lm_lib.extract_ops(*_site_program(site, rank_per_group))
        coef = self.lm.calibration.coef      # latency = c0 + c1 * linear + ... + c3 * n_ops
        return coef[1] * sum(self.lm.op_latency(op) for op in ops) + coef[3] * len(ops)

    def model(self, fn, variables, *inputs) -> float:
        return float(self.lm.predict(fn, variables, *inputs))


def _site_program(site: Site, rank_per_group: Optional[int]):
    """(fn, variables, x) running only this site's linear op(s), for latency lookup."""
    from lowrank.kernels import factor_shapes
    from core.rewrite import bind_equation
    eqn, k, rule = site.eqn, site.operand, site.rule
    x = jax.ShapeDtypeStruct(eqn.invars[1 - k].aval.shape, eqn.invars[1 - k].aval.dtype)
    if rank_per_group is None:
        kernel = jax.ShapeDtypeStruct(eqn.invars[k].aval.shape, eqn.invars[k].aval.dtype)

        def one(w, x):
            ins = [x, w["k"]] if k == 1 else [w["k"], x]
            return bind_equation(eqn, ins)[0]
        return one, {"k": _zeros(kernel)}, _zeros(x)
    s0, s1 = factor_shapes(eqn, k, rank_per_group)

    def two(w, x):
        ins = [x, None] if k == 1 else [None, x]
        return rule.apply(eqn, k, ins, w["w0"], w["w1"])[0]
    dtype = eqn.invars[k].aval.dtype
    return two, {"w0": np.zeros(s0, dtype), "w1": np.zeros(s1, dtype)}, _zeros(x)


def _zeros(spec):
    return np.zeros(spec.shape, spec.dtype)


def site_options(site: Site, curve: np.ndarray, cost, rank_multiple: int = 1
                 ) -> SiteOptions:
    """Options for one site: untouched, and every saving rank whose total intermediate
    width (groups x rank) is a multiple of ``rank_multiple``."""
    geo = site.geometry
    ranks: List[Optional[int]] = [None]
    costs, errors = [cost.site(site, None)], [0.0]
    for r in range(1, geo.full_rank + 1):
        if not geo.saves(r) or (geo.groups * r) % rank_multiple:
            continue
        ranks.append(r)
        costs.append(cost.site(site, r))
        errors.append(float(curve[r]))
    return SiteOptions(site.path, ranks, np.asarray(costs, np.float64),
                       np.asarray(errors, np.float64))


class BudgetError(ValueError):
    """No choice of ranks meets the budget."""


def allocate(options: Sequence[SiteOptions], fixed_cost: float, budget: float,
             resolution: int = 4000) -> Dict[str, Optional[int]]:
    """Exact multiple-choice knapsack: ``{path: rank per group or None}`` minimizing the
    summed error with ``fixed_cost + sum(chosen costs) <= budget``."""
    capacity = budget - fixed_cost
    least = fixed_cost + sum(float(o.costs.min()) for o in options)
    if capacity <= 0 or least > budget:
        raise BudgetError(f"budget {budget:.4g} is below the least reachable cost "
                          f"{least:.4g} (fixed part {fixed_cost:.4g})")
    resolution = max(resolution, 50 * len(options))
    quantum = capacity / resolution
    size = resolution + 1
    best = np.zeros(size)                 # best[b]: least error using at most b quanta
    choices = []
    for opt in options:
        units = np.ceil(opt.costs / quantum - 1e-9).astype(np.int64)
        new = np.full(size, np.inf)
        pick = np.zeros(size, np.int32)
        for i, (u, e) in enumerate(zip(units, opt.errors)):
            if u >= size:
                continue
            candidate = np.full(size, np.inf)
            candidate[u:] = best[:size - u] + e
            better = candidate < new
            new[better], pick[better] = candidate[better], i
        best = new
        choices.append(pick)
    if not math.isfinite(best[-1]):
        raise BudgetError(f"no rank choice fits the budget {budget:.4g} after rounding; "
                          "raise the resolution or the budget")
    result, b = {}, resolution
    for opt, pick in zip(reversed(list(options)), reversed(choices)):
        i = int(pick[b])
        result[opt.path] = opt.ranks[i]
        b -= int(np.ceil(opt.costs[i] / quantum - 1e-9))
    return result


def chosen_cost(options: Sequence[SiteOptions], ranks: Dict[str, Optional[int]]) -> float:
    return sum(float(o.costs[o.ranks.index(ranks[o.path])]) for o in options)
