"""Low-rank decomposition of the dense and conv layers of any JAX model.

``factorize(fn, variables, *inputs, ranks=... | budget=..., method='svd'|'data'|'learned',
data=batches) -> Factorized`` with ``.fn``, ``.variables`` and a per-layer report; see
``lowrank.factorize`` for the pipeline and the other modules for one concept each.
"""
from core import xla_workarounds  # noqa: F401  (before any JAX backend exists)
from lowrank.allocation import Budget, BudgetError
from lowrank.factorize import METHODS, Factorized, LayerReport, factorize
from lowrank.function import FactoredFunction, LowRankKernel
from lowrank.learned import refine
from lowrank.metrics import in_network_errors, isolated_errors
from lowrank.sites import Site, find_sites

__all__ = ["factorize", "Factorized", "LayerReport", "Budget", "BudgetError", "METHODS",
           "FactoredFunction", "LowRankKernel", "find_sites", "Site", "refine",
           "in_network_errors", "isolated_errors"]
