"""The exactness and identity invariants of DESIGN.md on every model of the zoo.

For random keep-sets (several seeds, some groups removed entirely) the physically pruned
model equals the masked model at 0/1 masks; keeping everything is the original function;
parameters shrink exactly by the removed positions of their groups' index maps; no
zero-size array survives in the pruned jaxpr. A quick subset runs by default, the whole zoo
(``models.zoo.ZOO``, so new models are covered) in the slow test.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core.trace import path_to_str
from models import zoo
from pruning import analyze, keep_to_masks, masked, prune

QUICK = ["resnet20", "mobilenetv2", "vit_fused", "transformer_lm"]


@functools.lru_cache(maxsize=None)
def _model(name):
    fn, variables, x = zoo.instantiate(name)
    return fn, variables, x, analyze(fn, variables, x)


def random_keep(analysis, seed, remove_prob=0.0):
    """A random keep-set over every prunable group; with ``remove_prob`` some groups lose
    every channel (whole-group removal)."""
    rng = np.random.default_rng(seed)
    keep = {}
    for g in analysis.prunable():
        if rng.random() < remove_prob:
            keep[g.id] = np.zeros(0, np.int64)
        else:
            k = int(rng.integers(1, g.size + 1))
            keep[g.id] = np.sort(rng.choice(g.size, k, replace=False))
    return keep


def relative_error(a, b, scale):
    diffs = [float(jnp.max(jnp.abs(jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32))))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))]
    return max(diffs) / max(scale, 1e-6)


def expected_shapes(analysis, variables, keep):
    """Each parameter's shape after removing its members' positions of removed channels."""
    shapes = {path_to_str(p): list(np.shape(leaf))
              for p, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}
    removed = {}
    for g in analysis.groups:
        if g.id not in keep:
            continue
        gone = np.setdiff1d(np.arange(g.size), keep[g.id])
        for m in g.members:
            removed.setdefault((m.path, m.axis), set()).update(
                m.index_map[gone].reshape(-1).tolist())
    for (path, axis), positions in removed.items():
        shapes[path][axis] -= len(positions)
    return {p: tuple(s) for p, s in shapes.items()}


def check_model(name, seeds=(0, 1), remove_prob=0.3, each_group=False):
    fn, variables, x, analysis = _model(name)
    reference = fn(variables, x)
    scale = max(float(jnp.max(jnp.abs(jnp.asarray(l, jnp.float32))))
                for l in jax.tree_util.tree_leaves(reference))
    g = masked(fn, analysis)

    same = prune(fn, variables, x, keep={}, analysis=analysis)
    assert relative_error(same.fn(same.variables, x), reference, scale) <= 1e-6

    cases = [random_keep(analysis, s) for s in seeds]
    cases.append(random_keep(analysis, 100 + seeds[0], remove_prob))
    if each_group:   # every group emptied on its own, the rest of the model intact
        cases += [{g.id: np.zeros(0, np.int64)} for g in analysis.prunable()]
    for keep in cases:
        pruned = prune(fn, variables, x, keep=keep, analysis=analysis)
        out = pruned.fn(pruned.variables, x)
        want = g(variables, keep_to_masks(analysis.groups, keep), x)
        assert relative_error(out, want, scale) <= 1e-5, (name, keep)
        shapes = expected_shapes(analysis, variables, keep)
        for p, leaf in jax.tree_util.tree_flatten_with_path(pruned.variables)[0]:
            assert tuple(leaf.shape) == shapes[path_to_str(p)], path_to_str(p)
            assert leaf.size > 0
        for path in pruned.removed_params:
            assert path in shapes
        jaxpr = pruned.fn.jaxpr(x).jaxpr
        for eqn in jaxpr.eqns:
            for v in eqn.outvars:
                assert 0 not in getattr(v.aval, "shape", ()), (name, eqn)
        assert not pruned.notes, pruned.notes


@pytest.mark.parametrize("name", QUICK)
def test_exact_quick(name):
    check_model(name, seeds=(0,))


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in zoo.ZOO if n not in QUICK])
def test_exact_whole_zoo(name):
    check_model(name, seeds=(0, 1, 2), each_group=True)
