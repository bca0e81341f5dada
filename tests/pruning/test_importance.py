"""Importance criteria against hand computations on a two-layer model with a norm, and
keep-set selection (local, global, rounding to a multiple)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pruning import analyze, importance


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def mlp(v, x):
    p = v["params"]
    h = x @ p["w1"]["kernel"] + p["w1"]["bias"]
    h = jax.nn.relu(h * p["norm"]["scale"])
    h = h @ p["w2"]["kernel"]
    return jax.nn.relu(h) @ p["w3"]["kernel"]


def _setup():
    v = {"params": {"w1": {"kernel": _normal(0, (3, 6)), "bias": _normal(1, (6,))},
                    "norm": {"scale": _normal(2, (6,))},
                    "w2": {"kernel": _normal(3, (6, 16))},
                    "w3": {"kernel": _normal(4, (16, 2))}}}
    x = _normal(5, (4, 3))
    analysis = analyze(mlp, v, x)
    hidden = next(g for g in analysis.groups if g.size == 6)
    wide = next(g for g in analysis.groups if g.size == 16)
    return v, x, analysis, hidden, wide


def test_magnitude_sums_every_member():
    v, _, analysis, hidden, _ = _setup()
    q = v["params"]
    p = {"w1": np.asarray(q["w1"]["kernel"]), "b1": np.asarray(q["w1"]["bias"]),
         "s": np.asarray(q["norm"]["scale"]), "w2": np.asarray(q["w2"]["kernel"])}
    l1 = (np.abs(p["w1"]).sum(0) + np.abs(p["b1"]) + np.abs(p["s"])
          + np.abs(p["w2"]).sum(1))
    l2 = np.sqrt((p["w1"] ** 2).sum(0) + p["b1"] ** 2 + p["s"] ** 2 + (p["w2"] ** 2).sum(1))
    np.testing.assert_allclose(importance.magnitude(analysis.groups, v, 1)[hidden.id], l1,
                               rtol=1e-6)
    np.testing.assert_allclose(importance.magnitude(analysis.groups, v, 2)[hidden.id], l2,
                               rtol=1e-6)


def test_bn_scale_uses_norm_scales_and_falls_back_to_magnitude():
    v, _, analysis, hidden, wide = _setup()
    scores = importance.bn_scale(analysis.groups, v)
    np.testing.assert_allclose(scores[hidden.id], np.abs(v["params"]["norm"]["scale"]),
                               rtol=1e-6)
    l1 = importance.magnitude(analysis.groups, v, 1)[wide.id]
    np.testing.assert_allclose(scores[wide.id], l1 / l1.mean(), rtol=1e-6)


def test_taylor_is_the_first_order_loss_change_of_removing_a_channel():
    v, x, analysis, hidden, _ = _setup()

    def loss(variables):
        return jnp.mean(mlp(variables, x) ** 2)

    scores = importance.taylor(analysis.groups, v, loss)[hidden.id]
    grads = jax.grad(loss)(v)["params"]
    p = v["params"]
    want = np.abs(np.sum(grads["w1"]["kernel"] * p["w1"]["kernel"], 0)
                  + grads["w1"]["bias"] * p["w1"]["bias"]
                  + grads["norm"]["scale"] * p["norm"]["scale"]
                  + np.sum(grads["w2"]["kernel"] * p["w2"]["kernel"], 1))
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-7)
    # Scaling one channel's weights by (1 - t) changes the loss by about -t * sum(g * w).
    c = int(np.argmax(scores))
    t = 1e-3
    shrunk = jax.tree_util.tree_map(lambda a: a, v)
    shrunk["params"]["w1"]["kernel"] = p["w1"]["kernel"].at[:, c].multiply(1 - t)
    shrunk["params"]["w1"]["bias"] = p["w1"]["bias"].at[c].multiply(1 - t)
    shrunk["params"]["norm"]["scale"] = p["norm"]["scale"].at[c].multiply(1 - t)
    shrunk["params"]["w2"]["kernel"] = p["w2"]["kernel"].at[c].multiply(1 - t)
    assert abs(float(loss(v) - loss(shrunk))) == pytest.approx(t * scores[c], rel=0.05)


def test_select_local_global_and_rounding():
    v, _, analysis, hidden, wide = _setup()
    scores = {hidden.id: np.array([5., 1., 4., 2., 6., 3.]),
              wide.id: np.arange(16, dtype=float)}
    keep = importance.select(analysis.groups, scores, 0.5)
    assert keep[hidden.id].tolist() == [0, 2, 4]
    assert keep[wide.id].tolist() == list(range(8, 16))
    rounded = importance.select(analysis.groups, scores, 0.4, multiple=8)
    assert rounded[wide.id].tolist() == list(range(8, 16))   # 6.4 -> 8
    assert len(rounded[hidden.id]) == 6                        # smaller than the multiple
    # Global: normalized by group mean, the top half overall.
    glob = importance.select(analysis.groups, scores, 0.5, scope="global")
    norm = importance.normalized(scores)
    pooled = np.sort(np.concatenate(list(norm.values())))[::-1]
    threshold = pooled[10]
    for gid, kept in glob.items():
        assert kept.tolist() == np.flatnonzero(norm[gid] >= threshold).tolist()
    assert importance.round_count(0.2, 6, 1, 1) == 1
    assert importance.round_count(13, 32, 8) == 16
    assert importance.round_count(40, 32, 8) == 32


def test_random_is_seeded_and_criteria_by_name():
    v, _, analysis, hidden, _ = _setup()
    a = importance.scores_for("random", analysis.groups, v, seed=3)
    b = importance.random(analysis.groups, 3)
    np.testing.assert_array_equal(a[hidden.id], b[hidden.id])
    assert set(importance.scores_for("l2", analysis.groups, v)) == {
        g.id for g in analysis.groups if g.prunable}
    with pytest.raises(KeyError):
        importance.scores_for("nope", analysis.groups, v)
