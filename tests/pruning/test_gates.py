"""Learned gates: straight-through masks, the budget term, and the showcase pipeline."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import run
from core import cost
from pruning import find_groups, gates, importance, keep_sets, prune
from models import zoo


def test_masks_are_hard_forward_and_differentiable():
    logits = {0: jnp.array([2.0, -2.0, 0.5]), 3: jnp.array([-0.1, 0.1])}
    masks = gates.sample_masks(logits, jax.random.key(0), noise_scale=0.0)
    np.testing.assert_array_equal(masks[0], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(masks[3], [0.0, 1.0])
    grad = jax.grad(lambda l: sum(jnp.sum(m * jnp.arange(1.0, 1 + m.size))
                                  for m in gates.sample_masks(l, jax.random.key(0), 0.0).values()))(logits)
    assert all(np.all(np.abs(g) > 0) for g in grad.values())


def test_spread_initial_logits_follow_magnitude_rank():
    fn, variables, x = zoo.instantiate("resnet20")
    groups = find_groups(fn, variables, x[:1])
    flat = gates.init_logits(groups, 3.0)
    spread = gates.init_logits(groups, 3.0, spread=4.0, variables=variables)
    scores = importance.scores_for("l1", [g for g in groups if g.prunable], variables)
    assert set(flat) == set(spread) and flat
    for gid, logits in spread.items():
        logits = np.asarray(logits)
        np.testing.assert_allclose(np.asarray(flat[gid]), 3.0)
        np.testing.assert_allclose([logits.min(), logits.max()], [1.0, 5.0], atol=1e-6)
        # the weakest channel by L1 magnitude has the lowest logit, the strongest the highest
        assert np.argmin(logits) == np.argmin(scores[gid])
        assert np.argmax(logits) == np.argmax(scores[gid])
        assert len(np.unique(logits)) == logits.size


def test_budget_penalty_pushes_flops_down_and_threshold_meets_it():
    fn, variables, x = zoo.instantiate("resnet20")
    groups = find_groups(fn, variables, x[:1])
    model = cost.cost_model(fn, variables, x[:1])
    settings = gates.GateSettings(target_ratio=0.5, multiple=1)
    penalty, relative = gates.budget_function(settings, model)
    full = jnp.asarray([g.size for g in model.groups], jnp.float32)
    assert float(relative(full)) == pytest.approx(2.0, rel=1e-5)
    grad = jax.grad(penalty)(full)
    prunable = [g.id for g in groups if g.prunable]
    assert all(float(grad[i]) > 0 for i in prunable), "more channels must cost more"
    # Logits that keep about half of every group: the thresholded model's exact cost
    # equals the differentiable cost at the hard sizes.
    logits = {g.id: jnp.where(jnp.arange(g.size) % 2 == 0, 1.0, -1.0) for g in groups
              if g.prunable}
    keep = gates.threshold(groups, logits, settings)
    pruned = prune(fn, variables, x[:1], keep=keep)
    exact = cost.count(pruned.fn, pruned.variables, x[:1]).flops
    masks = gates.sample_masks(logits, jax.random.key(0), 0.0)
    sizes = gates.kept_sizes(masks, np.asarray(full))
    np.testing.assert_allclose(float(model(sizes).flops), exact, rtol=1e-6)


@pytest.mark.slow
def test_showcase_pipeline_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("TEACHER_CACHE", str(tmp_path / "teachers"))
    workdir = tmp_path / "run"
    assert run.main(["--exp=prune_resnet20_tiny", f"--workdir={workdir}",
                     "--exp.gates.steps=150", "--exp.latency_table_path="
                     + str(tmp_path / "tables.json")]) == 0
    result = json.loads((workdir / "result.json").read_text())
    assert 1.6 < result["flops_reduction"] < 3.0, result["flops_reduction"]
    assert result["settings"]["gates"]["steps"] == 150, "the run records what it ran"
    assert result["after"]["parity_max_rel_error"] < 1e-3
    assert (workdir / "onnx" / "pruned.onnx").exists()
    assert (workdir / "finetune" / "metrics.jsonl").exists()
    assert "| pruned + fine-tuned |" in (workdir / "result.md").read_text()


def test_latency_budget_as_ratio_or_milliseconds():
    fn, variables, x = zoo.instantiate("resnet20")
    model = cost.cost_model(fn, variables, x[:1])
    full = jnp.asarray([g.size for g in model.groups], jnp.float32)
    latency_ms = lambda sizes: 0.01 * jnp.sum(sizes) + 0.5          # noqa: E731 (a fake device)
    by_ratio = gates.GateSettings(target="latency", target_ratio=0.5)
    _, relative = gates.budget_function(by_ratio, model, latency_ms)
    assert float(relative(full)) == pytest.approx(2.0, rel=1e-5)
    by_ms = gates.GateSettings(target="latency", target_ms=float(latency_ms(full)) / 4)
    penalty, relative = gates.budget_function(by_ms, model, latency_ms)
    assert float(relative(full)) == pytest.approx(4.0, rel=1e-5)
    assert float(jnp.min(jax.grad(penalty)(full))) > 0, "more channels must cost more"
    with pytest.raises(ValueError, match="latency model"):
        gates.budget_function(by_ratio, model, None)


def test_gates_train_from_any_iterator_of_batches_without_a_workdir():
    """Gate training runs through core.train with a plain iterator of (images, labels) and
    no workdir, and the budget term brings the FLOPs down to the target."""
    import flax.linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(32)(x.reshape(len(x), -1)))
            return nn.Dense(10)(nn.relu(nn.Dense(32)(x)))
    module = MLP()
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype(np.float32)
    variables = module.init(jax.random.key(0), x[:1])
    fn = lambda v, inp: module.apply(v, inp)                     # noqa: E731
    groups = find_groups(fn, variables, x[:1])
    model = cost.cost_model(fn, variables, x[:1])
    settings = gates.GateSettings(steps=60, batch_size=16, target_ratio=0.5, penalty=5.0,
                                  gate_learning_rate=0.1, multiple=1, log_every=10)
    rng = np.random.default_rng(1)
    batches = ((rng.normal(size=(16, 8, 8, 1)).astype(np.float32),
                rng.integers(0, 10, 16).astype(np.int32)) for _ in range(settings.steps))
    teacher_fn = jax.jit(lambda inp: fn(variables, inp))
    trained, logits, history = gates.train_gates(fn, variables, groups, batches, settings,
                                                 None, model, teacher_fn, show_progress=False)
    assert [h["step"] for h in history] == list(range(10, 61, 10))
    assert history[0]["budget_relative"] > 1.3 and history[-1]["budget_relative"] < 1.1
    assert set(logits) == {g.id for g in groups if g.prunable}
    assert jax.tree.structure(trained) == jax.tree.structure(variables)
    keep = gates.threshold(groups, logits, settings)
    pruned = prune(fn, trained, x[:1], keep=keep)
    flops = cost.count(pruned.fn, pruned.variables, x[:1]).flops
    assert flops < 0.6 * float(model(None).flops)


def test_budget_ramp_starts_at_the_full_model_and_ends_at_the_target():
    """budget_ramp: the budget of step s falls linearly from the full model (no penalty on
    the full model at step 0) to the target at ramp x steps; after it, the plain penalty."""
    fn, variables, x = zoo.instantiate("resnet20")
    model = cost.cost_model(fn, variables, x[:1])
    full = jnp.asarray([g.size for g in model.groups], jnp.float32)
    ramped = gates.GateSettings(target_ratio=0.5, steps=100, budget_ramp=0.5, penalty=1.0)
    plain = gates.GateSettings(target_ratio=0.5, steps=100, penalty=1.0)
    penalty, relative = gates.budget_function(ramped, model)
    plain_penalty, _ = gates.budget_function(plain, model)
    assert float(penalty(full, 0)) == pytest.approx(0.0, abs=1e-9)
    # Half-way through the ramp the budget is 0.75 of the full model: full is 1/0.75 above.
    excess = 1 / 0.75 - 1
    assert float(penalty(full, 25)) == pytest.approx(11 * excess ** 2, rel=1e-4)
    for step in (50, 99):
        assert float(penalty(full, step)) == pytest.approx(float(plain_penalty(full)), rel=1e-5)
    assert float(penalty(full)) == pytest.approx(float(plain_penalty(full)), rel=1e-5)


def test_multiple_zero_follows_the_device_runner():
    import ml_collections
    import experiments
    from export import runners
    runners.register_runner("test-npu-32", lambda: runners.CommandRunner(
        "test-npu-32", run="true", channel_multiple=32))
    try:
        config = ml_collections.ConfigDict(dict(device="test-npu-32",
                                                gates=dict(multiple=0, min_keep=1)))
        settings = experiments.gate_settings(config)
        assert settings.multiple == 32
        config.gates.multiple = 8        # an explicit multiple wins over the device's
        assert experiments.gate_settings(config).multiple == 8
    finally:
        runners.RUNNERS.pop("test-npu-32")
    with pytest.raises(ValueError, match="no device runner"):
        gates.GateSettings.from_config({"multiple": 0})


def test_threshold_steps_rounded_groups_down_to_the_budget():
    """Rounding kept counts to a coarse multiple (4 on this 4/8-channel model, as 16 on
    the selfie segmenter's 16-128) gives back budget; with the budget's
    relative function the keep-set is stepped down, whole multiples at a time, the lowest
    logits first, until the pruned model's exact FLOPs (core.cost.count) meet it."""
    fn, variables, x = zoo.instantiate("resnet20")
    groups = find_groups(fn, variables, x[:1])
    model = cost.cost_model(fn, variables, x[:1])
    full_flops = float(model(None).flops)
    settings = gates.GateSettings(target_ratio=0.75, multiple=4, min_keep=1)
    rng = np.random.default_rng(0)
    logits = {g.id: jnp.asarray(rng.normal(size=g.size) + 1.0, jnp.float32)  # ~84% positive
              for g in groups if g.prunable}

    def exact_ratio(keep):
        pruned = prune(fn, variables, x[:1], keep=keep)
        return cost.count(pruned.fn, pruned.variables, x[:1]).flops / full_flops

    rounded = gates.threshold(groups, logits, settings)
    assert exact_ratio(rounded) > 0.75 * 1.02         # rounding alone misses the budget
    fitted = gates.threshold(groups, logits, settings,
                             gates.budget_function(settings, model)[1])
    assert exact_ratio(fitted) <= 0.75 * 1.02
    for gid, kept in fitted.items():
        size = keep_sets.group_named(groups, gid).size
        assert len(kept) % 4 == 0 or len(kept) == size, (gid, len(kept))
        assert len(kept) <= len(rounded[gid])
        want = np.sort(np.argsort(-np.asarray(logits[gid]), kind="stable")[:len(kept)])
        np.testing.assert_array_equal(kept, want)      # the highest logits stay


def test_a_budget_below_the_narrowest_rounded_model_is_refused():
    """ResNet-20 of the zoo has 4- and 8-channel groups: at multiples of 8 only the 8-wide
    ones could be gated and none narrowed, so any budget below the full model is refused
    before training, naming the multiple; at multiples of 4 the narrowest model is 0.68 of
    the FLOPs: 0.6 is refused, 0.75 accepted."""
    fn, variables, x = zoo.instantiate("resnet20")
    groups = find_groups(fn, variables, x[:1])
    model = cost.cost_model(fn, variables, x[:1])
    full = np.array([g.size for g in model.groups], np.float32)
    coarse = gates.GateSettings(target_ratio=0.6, multiple=8)
    assert gates.gateable(groups, coarse) == []
    with pytest.raises(ValueError, match="multiples of 8"):
        gates.check_reachable(gates.gateable(groups, coarse), full, coarse,
                              gates.budget_function(coarse, model)[1])
    fine = gates.GateSettings(target_ratio=0.6, multiple=4)
    gated = gates.gateable(groups, fine)
    assert sorted(g.size for g in gated) == [8, 8, 8, 8]
    with pytest.raises(ValueError, match="1.13x the target"):
        gates.check_reachable(gated, full, fine, gates.budget_function(fine, model)[1])
    fine.target_ratio = 0.75
    gates.check_reachable(gated, full, fine, gates.budget_function(fine, model)[1])


def test_channels_the_latency_table_gives_for_free_come_back():
    """A device whose kernels run in blocks of 8 channels (as onnxruntime's AVX-512 convs
    run 24 and 32 channels in the same time): a group the gates left at 4 of 8 channels
    costs as much as at 8, so ``fill_free`` gives the 4 back, the most probable first,
    without raising the predicted latency; on a device whose latency is linear in the
    channels nothing comes back."""
    fn, variables, x = zoo.instantiate("resnet20")
    groups = find_groups(fn, variables, x[:1])
    model = cost.cost_model(fn, variables, x[:1])
    settings = gates.GateSettings(target="latency", target_ratio=0.8, multiple=4,
                                  fill_free=True, fit_budget=False)
    rng = np.random.default_rng(1)
    logits = {g.id: jnp.asarray(rng.normal(size=g.size), jnp.float32)   # about half kept
              for g in gates.gateable(groups, settings)}
    blocky = lambda sizes: 0.1 * jnp.sum(jnp.ceil(sizes / 8.0)) + 0.5   # noqa: E731
    linear = lambda sizes: 0.01 * jnp.sum(sizes) + 0.5                  # noqa: E731
    rounded = gates.threshold(groups, logits, settings)
    assert any(len(k) < keep_sets.group_named(groups, g).size for g, k in rounded.items())

    relative = gates.budget_function(settings, model, blocky)[1]
    filled = gates.keep_from_logits(groups, logits, settings, model, blocky)
    full = np.array([g.size for g in model.groups], np.float32)

    def sizes_of(keep):
        sizes = full.copy()
        for gid, kept in keep.items():
            sizes[keep_sets.group_named(groups, gid).id] = len(kept)
        return sizes
    assert float(relative(sizes_of(filled))) == pytest.approx(
        float(relative(sizes_of(rounded))), abs=1e-6)               # no slower
    for gid, kept in filled.items():                                 # every group is whole
        assert len(kept) == keep_sets.group_named(groups, gid).size, gid
    assert gates.keep_from_logits(groups, logits, settings, model, linear).keys() == \
        rounded.keys()
    for gid, kept in gates.keep_from_logits(groups, logits, settings, model,
                                            linear).items():
        np.testing.assert_array_equal(kept, rounded[gid])           # nothing was free
