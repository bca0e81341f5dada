"""NSGA-II returns a non-dominated, feasible set (property test over random problems)."""
import numpy as np
import pytest

from nas import evolution
from nas.predictors import LinearOnFeatures, OneHotMLP, ranking_metrics


@pytest.mark.parametrize("seed", range(6))
def test_search_returns_a_non_dominated_feasible_set(seed):
    rng = np.random.default_rng(seed)
    sizes = list(rng.integers(2, 6, size=int(rng.integers(3, 7))))
    weights = [rng.standard_normal((s, 3)) for s in sizes]

    def objectives(archs):
        return np.asarray([sum(w[k] for w, k in zip(weights, a)) for a in archs])
    budget = float(np.median(objectives([tuple(rng.integers(s) for s in sizes)
                                         for _ in range(50)])[:, 1]))
    violation = lambda archs: np.maximum(objectives(archs)[:, 1] - budget, 0)
    result = evolution.nsga2(sizes, objectives, population=16, generations=8, seed=seed,
                             violation=violation)
    obj = objectives(result.front)
    assert len(result.front) >= 1 and len(set(result.front)) == len(result.front)
    assert np.all(obj[:, 1] <= budget + 1e-12)
    for i in range(len(obj)):
        for j in range(len(obj)):
            assert not evolution.dominates(obj[j], obj[i])
    # Nothing in the final population that is feasible dominates a front member.
    pop = objectives(result.population)
    feasible = pop[violation(result.population) <= 0]
    assert not any(evolution.dominates(p, o) for p in feasible for o in obj)


def test_non_dominated_sort_and_crowding_by_hand():
    obj = np.array([[1, 4], [2, 2], [4, 1], [3, 3], [5, 5]], float)
    assert evolution.non_dominated_sort(obj) == [[0, 1, 2], [3], [4]]
    d = evolution.crowding_distance(obj[:3])
    assert np.isinf(d[0]) and np.isinf(d[2]) and d[1] == pytest.approx(2.0)


def test_baseline_predictors_recover_additive_targets():
    rng = np.random.default_rng(0)
    sizes = [3, 4, 3]
    table = [rng.random(s) for s in sizes]
    archs = list({tuple(int(rng.integers(s)) for s in sizes) for _ in range(80)})
    y = np.array([sum(t[k] for t, k in zip(table, a)) for a in archs])
    linear = LinearOnFeatures(lambda a: [t[k] for t, k in zip(table, a)]).fit(archs[:25], y[:25])
    assert ranking_metrics(linear.predict(archs[25:]), y[25:])["kendall_tau"] > 0.99
    mlp = OneHotMLP(sizes, steps=300).fit(archs[:25], y[:25])
    assert ranking_metrics(mlp.predict(archs[25:]), y[25:])["kendall_tau"] > 0.6
