"""Whole-branch removal on hand-written models where the answer is known in closed form:
a residual block whose inner channels all go is ``x + constant``; an inception branch
whose output channels all go disappears with the conv feeding it; an SE block without
squeeze channels scales by the constant ``sigmoid(b2)``."""
import collections

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pruning import analyze, keep_to_masks, masked, prune

B, H, W, C = 2, 5, 5, 3


def _normal(seed, shape, scale=0.3):
    return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _conv(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _head(p, y):
    return jnp.mean(y, axis=(1, 2)) @ p["head"]


def _group_of(analysis, path, axis):
    return next(g for g in analysis.groups if any(m.path == path and m.axis == axis
                                                  for m in g.members))


def _primitives(pruned, x):
    jaxpr = pruned.fn.jaxpr(x).jaxpr
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            assert 0 not in v.aval.shape, eqn
    return collections.Counter(e.primitive.name for e in jaxpr.eqns)


def _remove(fn, p, x, path, axis):
    analysis = analyze(fn, p, x)
    group = _group_of(analysis, path, axis)
    assert group.prunable
    keep = {group.id: []}
    pruned = prune(fn, p, x, keep=keep, analysis=analysis)
    masked_out = masked(fn, analysis)(p, keep_to_masks(analysis.groups, keep), x)
    np.testing.assert_allclose(pruned.fn(pruned.variables, x), masked_out, rtol=1e-5,
                               atol=1e-6)
    return pruned


# -------------------------------------------------------------------- residual
def residual(p, x):
    h = jax.nn.relu(_conv(x, p["w1"]) + p["b1"])
    h = _conv(h, p["w2"])
    h = (h - p["bn_mean"]) * p["bn_scale"] + p["bn_shift"]     # BatchNorm in inference
    return _head(p, jax.nn.relu(x + h))


def residual_params():
    return {"w1": _normal(0, (3, 3, C, 4)), "b1": _normal(1, (4,)),
            "w2": _normal(2, (3, 3, 4, C)), "bn_mean": _normal(3, (C,)),
            "bn_scale": 1 + _normal(4, (C,)), "bn_shift": _normal(5, (C,)),
            "head": _normal(6, (C, 7))}


def test_residual_block_becomes_identity_plus_constant():
    p, x = residual_params(), _normal(9, (B, H, W, C), 1.0)
    pruned = _remove(residual, p, x, "w1", 3)
    constant = -p["bn_mean"] * p["bn_scale"] + p["bn_shift"]
    want = _head(p, jax.nn.relu(x + constant))
    np.testing.assert_allclose(pruned.fn(pruned.variables, x), want, rtol=1e-5, atol=1e-6)
    prims = _primitives(pruned, x)
    assert prims["conv_general_dilated"] == 0
    assert {"w1", "b1", "w2"} <= set(pruned.removed_params)
    assert "w1" not in pruned.variables and "head" in pruned.variables


# ------------------------------------------------------------------- inception
def inception(p, x):
    a = jax.nn.relu(_conv(x, p["a"]))
    b = jax.nn.relu(_conv(jax.nn.relu(_conv(x, p["b1"])), p["b2"]))
    return _head(p, jnp.concatenate([a, b], axis=-1))


def test_inception_branch_disappears_with_its_feeding_conv():
    p = {"a": _normal(0, (1, 1, C, 2)), "b1": _normal(1, (1, 1, C, 3)),
         "b2": _normal(2, (3, 3, 3, 4)), "head": _normal(3, (6, 5))}
    x = _normal(9, (B, H, W, C), 1.0)
    pruned = _remove(inception, p, x, "b2", 3)
    want = _head({"head": p["head"][:2]}, jax.nn.relu(_conv(x, p["a"])))
    np.testing.assert_allclose(pruned.fn(pruned.variables, x), want, rtol=1e-5, atol=1e-6)
    prims = _primitives(pruned, x)
    assert prims["conv_general_dilated"] == 1
    assert prims["concatenate"] == 0
    assert {"b1", "b2"} <= set(pruned.removed_params)
    assert pruned.variables["head"].shape == (2, 5)


# ------------------------------------------------------------------------- SE
def squeeze_excite(p, x):
    s = jnp.mean(x, axis=(1, 2))
    z = jax.nn.relu(s @ p["w1"] + p["b1"])
    gate = jax.nn.sigmoid(z @ p["w2"] + p["b2"])
    return _head(p, _conv(x * gate[:, None, None, :], p["k"]))


def test_se_gate_without_squeeze_channels_is_a_constant_scale():
    p = {"w1": _normal(0, (C, 2)), "b1": _normal(1, (2,)), "w2": _normal(2, (2, C)),
         "b2": _normal(3, (C,)), "k": _normal(4, (3, 3, C, 4)), "head": _normal(5, (4, 3))}
    x = _normal(9, (B, H, W, C), 1.0)
    pruned = _remove(squeeze_excite, p, x, "w1", 1)
    want = _head(p, _conv(x * jax.nn.sigmoid(p["b2"]), p["k"]))
    np.testing.assert_allclose(pruned.fn(pruned.variables, x), want, rtol=1e-5, atol=1e-6)
    prims = _primitives(pruned, x)
    assert prims["dot_general"] == 1            # only the head
    assert prims["reduce_sum"] == 1             # only the head's pooling
    assert {"w1", "b1", "w2"} <= set(pruned.removed_params)
