"""Masks are explicit and differentiable; all-ones masks are the original model; a
LayerNorm over a masked axis normalizes over the kept channels only, exactly like the
natively narrower network the physical pruning builds."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pruning import analyze, keep_to_masks, masked, prune

D, F = 6, 5


def _normal(seed, shape, scale=0.5):
    return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


def layer_norm(x, scale, bias, eps=1e-6):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def block(p, x):
    h = x @ p["w_in"]                                  # (B, L, D): D is a prunable group
    h = layer_norm(h, p["ln_scale"], p["ln_bias"])
    h = jax.nn.gelu(h @ p["w_up"]) @ p["w_down"]      # back to D
    return layer_norm(h, p["ln2_scale"], p["ln2_bias"]) @ p["w_out"]


def _params():
    return {"w_in": _normal(0, (3, D)), "ln_scale": 1 + _normal(1, (D,)),
            "ln_bias": _normal(2, (D,)), "w_up": _normal(3, (D, F)),
            "w_down": _normal(4, (F, D)), "ln2_scale": 1 + _normal(5, (D,)),
            "ln2_bias": _normal(6, (D,)), "w_out": _normal(7, (D, 2))}


def _setup():
    p, x = _params(), _normal(8, (2, 4, 3), 1.0)
    analysis = analyze(block, p, x)
    # Two groups of D channels: x @ w_in with the first LayerNorm, w_down with the second.
    width = [g for g in analysis.groups if g.prunable and g.size == D]
    assert len(width) == 2
    hidden = next(g for g in analysis.groups if g.prunable and g.size == F)
    return p, x, analysis, width, hidden


def test_layer_norm_over_kept_channels_matches_a_narrower_network():
    p, x, analysis, width, hidden = _setup()
    kept = np.array([0, 2, 3, 5])
    narrow = dict(p)
    for name in ("w_in", "w_down"):
        narrow[name] = p[name][..., kept]
    for name in ("ln_scale", "ln_bias", "ln2_scale", "ln2_bias"):
        narrow[name] = p[name][kept]
    for name in ("w_up", "w_out"):
        narrow[name] = p[name][kept]
    want = block(narrow, x)
    keep = {g.id: kept for g in width}
    got_masked = masked(block, analysis)(p, keep_to_masks(analysis.groups, keep), x)
    pruned = prune(block, p, x, keep=keep, analysis=analysis)
    np.testing.assert_allclose(got_masked, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pruned.fn(pruned.variables, x), want, rtol=1e-5, atol=1e-6)
    assert pruned.variables["ln_scale"].shape == (4,)


def test_ones_are_the_original_and_masks_are_differentiable():
    p, x, analysis, width, hidden = _setup()
    g = masked(block, analysis)
    ones = {width[0].id: jnp.ones(D), width[1].id: jnp.ones(D), hidden.id: jnp.ones(F)}
    np.testing.assert_allclose(g(p, ones, x), block(p, x), rtol=1e-6, atol=1e-6)

    def loss(masks):
        return jnp.sum(g(p, masks, x) ** 2)

    soft = {width[0].id: jnp.full(D, 0.7), width[1].id: jnp.linspace(0.1, 1.0, D),
            hidden.id: jnp.linspace(0.2, 0.9, F)}
    grads = jax.grad(loss)(soft)
    for gid, grad in grads.items():
        assert grad.shape == soft[gid].shape
        assert np.all(np.isfinite(grad)) and float(jnp.sum(jnp.abs(grad))) > 0
    # Finite-difference check of one mask entry.
    eps = 1e-3
    bumped = dict(soft)
    bumped[hidden.id] = soft[hidden.id].at[1].add(eps)
    lowered = dict(soft)
    lowered[hidden.id] = soft[hidden.id].at[1].add(-eps)
    fd = (loss(bumped) - loss(lowered)) / (2 * eps)
    assert float(fd) == pytest.approx(float(grads[hidden.id][1]), rel=2e-2, abs=1e-4)
    jitted = jax.jit(g)(p, soft, x)
    np.testing.assert_allclose(jitted, g(p, soft, x), rtol=1e-5, atol=1e-6)


def test_rejects_unknown_or_misshaped_masks():
    p, x, analysis, width, _ = _setup()
    g = masked(block, analysis.groups)
    fixed = next(gr for gr in analysis.groups if not gr.prunable)
    with pytest.raises(ValueError):
        g(p, {fixed.id: jnp.ones(fixed.size)}, x)
    with pytest.raises(ValueError):
        g(p, {width[0].id: jnp.ones(D + 1)}, x)
