"""Pruning results that used to be silently wrong (issue 22, item 3), each against an
independent reference: the same function called with hand-narrowed parameters (the
"natively narrower" network), or the original model's own gradient.

- channels through loop and branch bodies (cond, scan with stacked weights, a
  state-space scan carry, while loops whose condition reduces over channels) are masked
  and pruned inside the bodies too;
- custom_jvp / custom_vjp rules (a straight-through estimator) survive masking and pruning;
- a NaN or inf in a removed channel does not reach the masked output (masks select);
- keep-sets are read strictly (boolean masks, integer indices; floats, negative,
  out-of-range and duplicate indices are errors naming the group);
- a model whose single input is a pytree and whose output is a dict.
"""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core import cost
from pruning import analyze, find_groups, keep_to_masks, masked, prune
from pruning.keep_sets import KeepError
from pruning.masked import CustomRuleDroppedWarning


def _normal(seed, shape, scale=0.5):
    return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _group_with(groups, path, axis):
    return [g for g in groups if any(m.path == path and m.axis == axis for m in g.members)]


def _narrow(params, cuts):
    """``params`` with ``cuts[name] = (axis, kept)`` (one or more) applied by hand."""
    out = dict(params)
    for name, axes in cuts.items():
        for axis, kept in axes:
            out[name] = jnp.take(out[name], jnp.asarray(kept), axis=axis)
    return out


def _three_ways(fn, p, inputs, keep):
    """(masked, pruned) outputs of ``fn`` under ``keep``."""
    analysis = analyze(fn, p, *inputs)
    got_masked = masked(fn, analysis)(p, keep_to_masks(analysis.groups, keep), *inputs)
    pruned = prune(fn, p, *inputs, keep=keep, analysis=analysis)
    return got_masked, pruned.fn(pruned.variables, *inputs), analysis, pruned


# ------------------------------------------------------------ loop and branch bodies
def _control_flow_model(p, x):
    h = x @ p["w_in"]
    h = jax.lax.cond(jnp.sum(x) > 0, lambda t: t * p["gain"], lambda t: t - 1.0, h)

    def layer(carry, w):
        return jnp.tanh(carry @ w) + carry, None

    h, _ = jax.lax.scan(layer, h, p["stack"])
    h = jax.lax.fori_loop(0, 2, lambda i, t: t * p["gain"] + 0.1, h)

    def grow(state):                   # the condition reduces over the hidden channels
        k, t = state
        return (k < 5) & (jnp.sum(t * t) < 40.0)

    _, h = jax.lax.while_loop(grow, lambda s: (s[0] + 1, s[1] * 1.3), (0, h))
    return h @ p["w_out"]


def _control_flow_params():
    return {"w_in": _normal(0, (3, 6)), "gain": 1 + _normal(1, (6,), 0.2),
            "stack": _normal(2, (4, 6, 6)), "w_out": _normal(3, (6, 2))}


@pytest.mark.parametrize("sign", [1.0, -1.0])     # both cond branches
def test_cond_scan_and_while_bodies_are_pruned_like_a_narrower_network(sign):
    p = _control_flow_params()
    x = sign * jnp.abs(_normal(4, (2, 3), 1.0))
    kept = np.array([0, 2, 3, 5])
    groups = find_groups(_control_flow_model, p, x)
    (hidden,) = _group_with(groups, "w_in", 1)
    assert hidden.prunable
    want = _control_flow_model(_narrow(p, {"w_in": [(1, kept)], "gain": [(0, kept)],
                                           "stack": [(1, kept), (2, kept)],
                                           "w_out": [(0, kept)]}), x)
    got_masked, got_pruned, _, pruned = _three_ways(_control_flow_model, p, (x,),
                                                    {hidden.id: kept})
    assert float(jnp.max(jnp.abs(want))) > 0.1
    np.testing.assert_allclose(got_masked, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_pruned, want, rtol=1e-5, atol=1e-5)
    assert pruned.variables["stack"].shape == (4, 4, 4)
    np.testing.assert_allclose(jax.jit(pruned.fn)(pruned.variables, x), want, rtol=1e-5,
                               atol=1e-5)


def _ssm(p, x):
    """A diagonal state-space layer: the state h (N channels) is a scan carry."""
    a = jax.nn.sigmoid(p["a"])

    def step(h, x_t):
        h = a * h + x_t @ p["b"]
        return h, h @ p["c"]

    h0 = jnp.zeros((x.shape[0], p["a"].shape[0]), x.dtype)
    h, ys = jax.lax.scan(step, h0, jnp.swapaxes(x, 0, 1))
    return jnp.swapaxes(ys, 0, 1) + (h @ p["c"])[:, None]


def test_state_space_scan_carry_is_pruned_consistently():
    p = {"a": _normal(0, (5,)), "b": _normal(1, (3, 5)), "c": _normal(2, (5, 2))}
    x = _normal(3, (2, 7, 3), 1.0)
    (state,) = _group_with(find_groups(_ssm, p, x), "b", 1)
    assert state.prunable and {m.path for m in state.members} == {"a", "b", "c"}
    kept = np.array([1, 2, 4])
    want = _ssm(_narrow(p, {"a": [(0, kept)], "b": [(1, kept)], "c": [(0, kept)]}), x)
    got_masked, got_pruned, _, _ = _three_ways(_ssm, p, (x,), {state.id: kept})
    np.testing.assert_allclose(got_masked, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_pruned, want, rtol=1e-5, atol=1e-5)
    # Removing the whole state leaves the model's output of an empty state: zeros.
    got_masked, got_pruned, _, _ = _three_ways(_ssm, p, (x,), {state.id: []})
    np.testing.assert_allclose(got_masked, 0.0, atol=1e-6)
    np.testing.assert_allclose(got_pruned, 0.0, atol=1e-6)


def test_masks_inside_a_scan_body_are_differentiable():
    p = {"a": _normal(0, (5,)), "b": _normal(1, (3, 5)), "c": _normal(2, (5, 2))}
    x = _normal(3, (2, 7, 3), 1.0)
    analysis = analyze(_ssm, p, x)
    (state,) = _group_with(analysis.groups, "b", 1)
    g = masked(_ssm, analysis)

    def loss(m):
        return jnp.sum(g(p, {state.id: m}, x) ** 2)

    m = jnp.full((5,), 0.5)
    grad = jax.jit(jax.grad(loss))(m)
    eps = 1e-3
    for c in (0, 3):
        bump = jnp.zeros(5).at[c].set(eps)
        numeric = (loss(m + bump) - loss(m - bump)) / (2 * eps)
        assert abs(float(numeric)) > 1e-2           # the mask acts inside the body
        np.testing.assert_allclose(grad[c], numeric, rtol=2e-2, atol=1e-3)


# ------------------------------------------------------------ custom derivative rules
@jax.custom_jvp
def ste_round(x):
    return jnp.round(x)


ste_round.defjvp(lambda primals, tangents: (jnp.round(primals[0]), tangents[0]))


@jax.custom_vjp
def ste_round_vjp(x):
    return jnp.round(x)


ste_round_vjp.defvjp(lambda x: (jnp.round(x), None), lambda _, g: (g,))


def _quantized(rounding):
    def fn(p, x):
        h = rounding(4.0 * jnp.tanh(x @ p["w1"]))
        return jax.nn.relu(h) @ p["w2"]
    return fn


@pytest.mark.parametrize("rounding", [ste_round, ste_round_vjp], ids=["jvp", "vjp"])
def test_straight_through_gradient_survives_masking_and_pruning(rounding):
    fn = _quantized(rounding)
    p = {"w1": _normal(0, (3, 6)), "w2": _normal(1, (6, 2))}
    x = _normal(2, (4, 3), 1.0)
    analysis = analyze(fn, p, x)
    (hidden,) = _group_with(analysis.groups, "w1", 1)
    kept = np.array([0, 1, 3, 4])
    keep = {hidden.id: kept}
    want = jax.grad(lambda q: jnp.sum(fn(q, x)))(p)["w1"]
    assert float(jnp.sum(jnp.abs(want[:, kept]))) > 1.0     # zero without the rule
    masks = keep_to_masks(analysis.groups, keep)
    g = masked(fn, analysis)
    got = jax.grad(lambda q: jnp.sum(g(q, masks, x)))(p)["w1"]
    np.testing.assert_allclose(got[:, kept], want[:, kept], rtol=1e-5, atol=1e-6)
    pruned = prune(fn, p, x, keep=keep, analysis=analysis)
    got = jax.grad(lambda q: jnp.sum(pruned.fn(q, x)))(pruned.variables)["w1"]
    np.testing.assert_allclose(got, want[:, kept], rtol=1e-5, atol=1e-6)
    # The narrow function itself stays narrow and equals the hand-narrowed network.
    narrow = _narrow(p, {"w1": [(1, kept)], "w2": [(0, kept)]})
    np.testing.assert_allclose(pruned.fn(pruned.variables, x), fn(narrow, x), rtol=1e-6)


def test_custom_rule_over_mixed_channels_warns_and_matches_the_narrow_model():
    @jax.custom_jvp
    def project(h, w):
        return h @ w

    project.defjvp(lambda pr, t: (pr[0] @ pr[1], t[0] @ pr[1] + pr[0] @ t[1]))

    def fn(p, x):
        return project(jnp.tanh(x @ p["w1"]), p["w2"])

    p = {"w1": _normal(0, (3, 6)), "w2": _normal(1, (6, 2))}
    x = _normal(2, (4, 3), 1.0)
    kept = np.array([1, 2, 5])
    groups = find_groups(fn, p, x)
    (hidden,) = _group_with(groups, "w1", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got_masked, got_pruned, _, _ = _three_ways(fn, p, (x,), {hidden.id: kept})
    assert any(issubclass(w.category, CustomRuleDroppedWarning) for w in caught)
    want = fn(_narrow(p, {"w1": [(1, kept)], "w2": [(0, kept)]}), x)
    np.testing.assert_allclose(got_masked, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_pruned, want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------ NaN in removed channels
def _log_model(p, x):
    return jnp.log(x @ p["w1"]) @ p["w2"]


def test_nan_in_a_removed_channel_does_not_reach_the_masked_output():
    x = jnp.abs(_normal(0, (4, 3), 1.0)) + 0.1
    w1 = jnp.abs(_normal(1, (3, 5))) + 0.1
    w1 = w1.at[:, 2].set(-w1[:, 2])                  # channel 2: log of a negative = NaN
    p = {"w1": w1, "w2": _normal(2, (5, 2))}
    p_inf = dict(p, w2=p["w2"].at[3].set(jnp.inf))   # channel 3: an inf weight row
    kept = np.array([0, 1, 4])
    for params in (p, p_inf):
        analysis = analyze(_log_model, params, x)
        (hidden,) = _group_with(analysis.groups, "w1", 1)
        want = _log_model(_narrow(params, {"w1": [(1, kept)], "w2": [(0, kept)]}), x)
        assert bool(jnp.all(jnp.isfinite(want)))
        masks = keep_to_masks(analysis.groups, {hidden.id: kept})
        g = masked(_log_model, analysis)
        np.testing.assert_allclose(g(params, masks, x), want, rtol=1e-6)
        pruned = prune(_log_model, params, x, keep={hidden.id: kept}, analysis=analysis)
        np.testing.assert_allclose(pruned.fn(pruned.variables, x), want, rtol=1e-6)
    # Hard 0/1 masks keep their gradient where the values are finite (gates learn through
    # them), and a NaN channel gives no NaN gradient.
    grad = jax.grad(lambda m: jnp.sum(g(p, {hidden.id: m}, x)))(masks[hidden.id])
    assert bool(jnp.all(jnp.isfinite(grad)))
    h = jnp.log(x @ p["w1"])
    want_grad = jnp.sum(h[:, :, None] * p["w2"][None], axis=(0, 2))
    np.testing.assert_allclose(grad[np.array([0, 1, 3, 4])],
                               want_grad[np.array([0, 1, 3, 4])], rtol=1e-5)


def test_soft_masks_still_scale():
    x = jnp.abs(_normal(0, (4, 3), 1.0)) + 0.1
    p = {"w1": jnp.abs(_normal(1, (3, 5))) + 0.1, "w2": _normal(2, (5, 2))}
    analysis = analyze(_log_model, p, x)
    (hidden,) = _group_with(analysis.groups, "w1", 1)
    m = jnp.array([0.0, 0.25, 0.5, 1.0, 0.75])
    got = masked(_log_model, analysis)(p, {hidden.id: m}, x)
    np.testing.assert_allclose(got, (jnp.log(x @ p["w1"]) * m) @ p["w2"], rtol=1e-5)


# ------------------------------------------------------------ keep-sets read strictly
def _keep_setup():
    p = {"w1": _normal(0, (3, 4)), "w2": _normal(1, (4, 2))}
    x = _normal(2, (2, 3))
    fn = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
    analysis = analyze(fn, p, x)
    (hidden,) = _group_with(analysis.groups, "w1", 1)
    return fn, p, x, analysis, hidden


def test_boolean_keep_is_a_mask():
    fn, p, x, analysis, hidden = _keep_setup()
    keep = {hidden.id: [True, False, True, True]}
    masks = keep_to_masks(analysis.groups, keep)
    np.testing.assert_array_equal(masks[hidden.id], [1, 0, 1, 1])
    pruned = prune(fn, p, x, keep=keep, analysis=analysis)
    assert pruned.sizes[hidden.id] == 3
    np.testing.assert_array_equal(pruned.keep[hidden.id], [0, 2, 3])
    np.testing.assert_array_equal(
        prune(fn, p, x, keep={hidden.id: np.array([True, False, True, True])},
              analysis=analysis).keep[hidden.id], [0, 2, 3])


@pytest.mark.parametrize("kept, words", [
    ([0.7, 2.2], "integers"), ([-1], "out of range"), ([0, 4], "out of range"),
    ([1, 1, 2], "duplicate"), ([True, False], "one entry per channel")])
def test_bad_keep_sets_are_errors_naming_the_group(kept, words):
    fn, p, x, analysis, hidden = _keep_setup()
    for call in (lambda: keep_to_masks(analysis.groups, {hidden.id: kept}),
                 lambda: prune(fn, p, x, keep={hidden.id: kept}, analysis=analysis)):
        with pytest.raises(KeepError, match=words) as err:
            call()
        assert f"group {hidden.id}" in str(err.value)


def test_empty_keep_removes_the_group():
    fn, p, x, analysis, hidden = _keep_setup()
    masks = keep_to_masks(analysis.groups, {hidden.id: []})
    np.testing.assert_array_equal(masks[hidden.id], np.zeros(4))


# ------------------------------------------------------------ pytree inputs and outputs
def _two_inputs(p, inputs):
    image, ids = inputs
    h = jax.nn.relu(jax.lax.conv_general_dilated(
        image, p["conv"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    img = jnp.mean(h, axis=(1, 2)) @ p["img_proj"]
    tok = jnp.mean(jnp.take(p["emb"], ids, axis=0), axis=1) @ p["tok_proj"]
    return {"logits": jax.nn.relu(img + tok) @ p["head"], "image": img}


def test_a_tuple_input_and_a_dict_output():
    p = {"conv": _normal(0, (3, 3, 2, 5)), "img_proj": _normal(1, (5, 4)),
         "emb": _normal(2, (10, 6)), "tok_proj": _normal(3, (6, 4)), "head": _normal(4, (4, 3))}
    inputs = (_normal(5, (2, 8, 8, 2), 1.0), jnp.array([[1, 2, 3], [4, 5, 6]]))
    groups = find_groups(_two_inputs, p, inputs)
    (conv,) = [g for g in _group_with(groups, "conv", 3) if g.prunable]
    (emb,) = [g for g in _group_with(groups, "emb", 1) if g.prunable]
    keep = {conv.id: [0, 2, 3], emb.id: [1, 4, 5]}
    narrow = _narrow(p, {"conv": [(3, keep[conv.id])], "img_proj": [(0, keep[conv.id])],
                         "emb": [(1, keep[emb.id])], "tok_proj": [(0, keep[emb.id])]})
    want = _two_inputs(narrow, inputs)
    got_masked, got_pruned, analysis, pruned = _three_ways(_two_inputs, p, (inputs,), keep)
    for got in (got_masked, got_pruned):
        assert set(got) == {"logits", "image"}
        for key in got:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)
    # Another batch size goes through the same pruned function.
    other = (_normal(6, (3, 8, 8, 2), 1.0), jnp.array([[0, 1, 2]] * 3))
    np.testing.assert_allclose(pruned.fn(pruned.variables, other)["logits"],
                               _two_inputs(narrow, other)["logits"], rtol=1e-5, atol=1e-6)
    # Cost: the exact count of the narrow model, and the cost model at the kept sizes.
    report = cost.count(_two_inputs, p, inputs)
    narrow_report = cost.count(_two_inputs, narrow, inputs)
    model = cost.cost_model(_two_inputs, p, inputs)
    assert float(model().flops) == report.flops
    sizes = {conv.id: 3, emb.id: 3}
    assert float(model(sizes).flops) == narrow_report.flops
    assert float(model(sizes).params) == narrow_report.params
