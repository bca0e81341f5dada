"""The predictors' target against training: sampling within a latency range, and the
agreement of untrained targets and of the accuracy predictor with short fine-tunes."""
import itertools

import numpy as np
import pytest

from nas import finetuned_targets, predictors
from nas.search_space import TEACHER, SearchSpace


def test_sampling_keeps_only_what_the_range_accepts():
    space = SearchSpace((0, 1, 2, 3), tuple((TEACHER, "a", "b") for _ in range(4)))
    cheap = lambda arch: sum(arch) >= 5          # noqa: E731  (options 1, 2 are cheaper)
    archs = space.sample(np.random.default_rng(0), 20, include_teacher=True, accept=cheap)
    assert archs[0] == space.teacher() and len(archs) == 20 == len(set(archs))
    assert all(cheap(a) for a in archs[1:])
    everything = [a for a in itertools.product(range(3), repeat=4) if cheap(a)]
    assert len(space.sample(np.random.default_rng(0), 500, accept=cheap)) == len(everything)


def test_agreement_ranks_each_target_and_the_predictor_against_the_finetuned_accuracy():
    rng = np.random.default_rng(0)
    archs = [tuple(int(v) for v in rng.integers(0, 3, 4)) for _ in range(40)]
    archs = list(dict.fromkeys(archs))
    quality = lambda a: 0.8 + 0.03 * a[0] - 0.02 * a[1] + 0.01 * a[2]   # noqa: E731 additive
    rows = [{"arch": list(a), "accuracy": quality(a), "recalibrated_accuracy": quality(a),
             "assembled_accuracy": -quality(a)} for a in archs]
    tuned = [{"arch": list(a), "steps": 200, "finetuned_accuracy": quality(a) + 0.05}
             for a in archs[:8]]
    factory = lambda: predictors.LinearOnFeatures(   # noqa: E731
        lambda a: [float(v == k) for v in a for k in range(3)])
    out = finetuned_targets.agreement(rows, tuned, factory)
    assert out["architectures"] == 8 and out["steps"] == 200
    assert out["tau_recalibrated_accuracy"] == pytest.approx(1.0)
    assert out["tau_assembled_accuracy"] == pytest.approx(-1.0)
    assert out["tau_predictor"] > 0.9        # fitted on the 30-odd others, additive truth


def test_the_short_recipe_is_the_comparisons_at_one_rate():
    import ml_collections
    recipe = ml_collections.ConfigDict(dict(steps=1500, learning_rates=[0.02, 0.1],
                                            warmup_steps=150, checkpoint_every=250,
                                            batch_size=128))
    short = finetuned_targets.short_config(recipe, 200, 0.02)
    assert (short.steps, short.learning_rates, short.warmup_steps) == (200, [0.02], 20)
    assert short.batch_size == 128 and recipe.steps == 1500        # the original untouched
