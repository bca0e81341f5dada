"""Prune, then factorize: the pruned model is just another function, so low-rank works on
it unchanged; full rank reproduces the pruned model and the result exports with parity."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import export
import lowrank
import pruning
from core import trace
from models import zoo


@pytest.mark.slow
def test_prune_then_factorize_matches_and_exports(tmp_path):
    fn, variables, x = zoo.instantiate("resnet20")
    analysis = pruning.analyze(fn, variables, x)
    prunable = [g for g in analysis.groups if g.prunable and g.size >= 4]
    keep = {g.id: np.arange(g.size // 2) for g in prunable[:3]}
    pruned = pruning.prune(fn, variables, x, keep=keep, analysis=analysis)
    y_pruned = pruned.fn(pruned.variables, x)

    sites, _ = lowrank.find_sites(trace.trace(pruned.fn, pruned.variables, x))
    assert sites
    full = {s.path: s.geometry.full_rank for s in sites}
    same = lowrank.factorize(pruned.fn, pruned.variables, x, ranks=full, method="data",
                             data=[x])
    y_same = same.fn(same.variables, x)
    assert float(jnp.max(jnp.abs(y_same - y_pruned)) / jnp.max(jnp.abs(y_pruned))) <= 1e-5

    half = {s.path: max(1, s.geometry.full_rank // 2) for s in sites}
    low = lowrank.factorize(pruned.fn, pruned.variables, x, ranks=half, method="data",
                            data=[x])
    assert any(layer.rank < layer.full_rank for layer in low.layers)
    result = export.to_onnx(low.fn, low.variables, x, path=str(tmp_path / "pruned_lr.onnx"))
    assert result.parity.ok
    assert jax.jit(low.fn)(low.variables, x).shape == y_pruned.shape
