"""benchmarks/flops_targets: a keep-set moved to the FLOPs target one multiple at a time."""
import types

import numpy as np

from benchmarks.flops_targets import nearest_keep, step_to_target

SIZES = {0: 16, 1: 32, 2: 64}
FLOPS_PER_CHANNEL = {0: 50.0, 1: 10.0, 2: 3.0}       # a 16-channel group at high resolution


def _setup():
    cost = lambda sizes=None: types.SimpleNamespace(matmul_flops=100.0 + sum(
        FLOPS_PER_CHANNEL[g] * (SIZES[g] if sizes is None else sizes[g]) for g in SIZES))
    return types.SimpleNamespace(groups=[types.SimpleNamespace(id=g, size=n)
                                         for g, n in SIZES.items()],
                                 cost_model=cost, full_flops=cost().matmul_flops)


def _reduction(setup, keep):
    return setup.full_flops / setup.cost_model({g: len(k) for g, k in keep.items()}).matmul_flops


def test_greedy_moves_reach_the_target_keeping_the_highest_logits():
    setup = _setup()
    rng = np.random.default_rng(0)
    logits = {g: rng.normal(size=n) for g, n in SIZES.items()}
    top = lambda g, n: np.sort(np.argsort(-logits[g], kind="stable")[:n])
    start = {0: top(0, 8), 1: top(1, 32), 2: top(2, 64)}                 # 1.44x, target 2x
    keep, moves = step_to_target(setup, start, logits, 8, 8, 2.0)
    assert moves > 0
    assert abs(_reduction(setup, keep) / 2.0 - 1) < abs(_reduction(setup, start) / 2.0 - 1)
    assert abs(_reduction(setup, keep) / 2.0 - 1) < 0.05
    for g, kept in keep.items():          # always the highest-logit channels of a group
        assert len(kept) % 8 == 0
        np.testing.assert_array_equal(np.sort(kept),
                                      np.sort(np.argsort(-logits[g], kind="stable")[:len(kept)]))


def test_nearest_keep_picks_the_candidate_nearest_the_target():
    setup = _setup()
    candidates = [(r, {g: np.arange(int(n * r)) for g, n in SIZES.items()})
                  for r in (0.25, 0.5, 0.75)]
    setting, _, reduction = nearest_keep(setup, candidates, 2.0)
    assert setting == 0.5 and abs(reduction - 2.0) < 0.2
