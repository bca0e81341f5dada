"""The pruned model is a plain JAX function: it jits, differentiates, vmaps, runs at other
batch sizes, exports to ONNX with parity, and its cost counted from its own jaxpr equals the
differentiable cost of the original model at the kept sizes."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core import cost
from export import to_onnx
from models import zoo
from pruning import keep_to_masks, masked, prune
from tests.pruning.test_prune_zoo import QUICK, _model, random_keep


@functools.lru_cache(maxsize=None)
def _pruned(name, seed=0, remove_prob=0.0):
    fn, variables, x, analysis = _model(name)
    keep = random_keep(analysis, seed, remove_prob)
    return prune(fn, variables, x, keep=keep, analysis=analysis), keep


def test_jit_grad_vmap_and_other_batch_sizes():
    fn, variables, x, analysis = _model("resnet20")
    pruned, keep = _pruned("resnet20")
    want = pruned.fn(pruned.variables, x)
    np.testing.assert_allclose(jax.jit(pruned.fn)(pruned.variables, x), want, rtol=1e-5,
                               atol=1e-6)
    xs = jnp.stack([x, 2 * x, -x])
    batched = jax.vmap(pruned.fn, in_axes=(None, 0))(pruned.variables, xs)
    for i in range(3):
        np.testing.assert_allclose(batched[i], pruned.fn(pruned.variables, xs[i]),
                                   rtol=1e-5, atol=1e-5)
    x5 = jnp.concatenate([x, x[:1] * 0.5, x], axis=0)
    g = masked(fn, analysis)
    np.testing.assert_allclose(pruned.fn(pruned.variables, x5),
                               g(variables, keep_to_masks(analysis.groups, keep), x5),
                               rtol=1e-5, atol=1e-5)

    @jax.jit
    def loss(v):
        return jnp.sum(pruned.fn(v, x) ** 2)

    grads = jax.grad(loss)(pruned.variables)
    flat = jax.tree_util.tree_leaves(grads)
    assert all(np.all(np.isfinite(g_)) for g_ in flat)
    assert sum(float(jnp.sum(jnp.abs(g_))) for g_ in flat) > 0
    kernel = pruned.variables["params"]["stem"]["kernel"]
    # Directional derivative check against a finite difference on one kernel.
    direction = jnp.ones_like(kernel)
    eps = 1e-3

    def along(t):
        v = jax.tree_util.tree_map(lambda a: a, pruned.variables)
        v["params"]["stem"]["kernel"] = kernel + t * direction
        return loss(v)

    fd = (along(eps) - along(-eps)) / (2 * eps)
    analytic = jnp.sum(grads["params"]["stem"]["kernel"] * direction)
    assert abs(float(fd - analytic)) <= 2e-2 * max(1.0, abs(float(analytic)))


def _cost_check(name, seed, remove_prob):
    fn, variables, x, analysis = _model(name)
    pruned, keep = _pruned(name, seed, remove_prob)
    counted = cost.count(pruned.fn, pruned.variables, x)
    model = cost.CostModel(analysis)(pruned.effective_sizes)
    assert counted.matmul_flops == int(np.round(float(model.matmul_flops)))
    assert counted.params == int(np.round(float(model.params)))
    if not any(len(k) == 0 for k in keep.values()):
        # With no group emptied, no constant was folded: every op is counted alike.
        assert counted.flops == int(np.round(float(model.flops)))
    return counted, model


@pytest.mark.parametrize("name", ["resnet20", "vit_fused"])
def test_cost_of_pruned_model_equals_differentiable_cost(name):
    _cost_check(name, 0, 0.0)


def test_cost_with_removed_groups_matmuls_and_params():
    pruned, keep = _pruned("resnet_bottleneck", 100, 0.3)
    assert any(len(k) == 0 for k in keep.values())
    counted, model = _cost_check("resnet_bottleneck", 100, 0.3)
    assert counted.flops <= float(model.flops) + 0.5   # folded constants only save work


def _export_check(name, seed=0, remove_prob=0.0):
    fn, variables, x, analysis = _model(name)
    pruned, _ = _pruned(name, seed, remove_prob)
    result = to_onnx(pruned.fn, pruned.variables, x, rtol=1e-4)
    assert result.parity.ok     # to_onnx also raises ExportParityError on a mismatch
    assert result.parity.batches == [x.shape[0], x.shape[0] + 1]   # and another batch size


@pytest.mark.parametrize("name", ["resnet20", "transformer_lm"])
def test_pruned_model_exports_to_onnx(name):
    _export_check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_pruned_zoo_exports_to_onnx(name):
    """Every zoo model, with random keep-sets and some groups emptied."""
    _export_check(name, 100, 0.3)
