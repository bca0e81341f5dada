"""Predictors judged over many random splits (nas.predictor_evaluation) on synthetic targets
whose truth is known, checked against scipy's Kendall tau and Spearman rho computed here,
and the GNN's block features (NSR, position) telling apart blocks of equal structure."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from nas import block_graph, gnn, predictor_evaluation, predictors

POSITIONS, OPTIONS = 6, 3


def synthetic_rows(n=150, noise=0.05, seed=0):
    """Architectures with an additive truth: y = sum over positions of a per-(position,
    option) value, plus a little noise (so splits differ and the sd is not zero)."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(POSITIONS, OPTIONS))
    archs = list(dict.fromkeys(tuple(int(k) for k in rng.integers(0, OPTIONS, POSITIONS))
                               for _ in range(3 * n)))[:n]
    y = np.array([values[np.arange(POSITIONS), a].sum() for a in archs])
    return archs, y + noise * rng.normal(size=len(y)), values


class RandomPredictor:
    """Predicts noise whatever it was fitted on: the ranking floor."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)

    def fit(self, archs, y):
        return self

    def predict(self, archs):
        return self.rng.normal(size=len(archs))


def test_splits_are_disjoint_cover_every_row_and_are_deterministic_per_seed():
    pairs = predictor_evaluation.split_indices(50, 20, 0.7, seed=3)
    assert len(pairs) == 20
    for train, test in pairs:
        assert len(train) == 35 and len(test) == 15
        assert not set(train.tolist()) & set(test.tolist())
        assert sorted(train.tolist() + test.tolist()) == list(range(50))
    assert len({tuple(train.tolist()) for train, _ in pairs}) == 20     # all different
    again = predictor_evaluation.split_indices(50, 20, 0.7, seed=3)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(pairs, again))
    other = predictor_evaluation.split_indices(50, 20, 0.7, seed=4)
    assert not np.array_equal(pairs[0][0], other[0][0])


def test_right_features_rank_near_one_random_near_zero_matching_scipy():
    archs, y, values = synthetic_rows()
    features = lambda a: values[np.arange(POSITIONS), list(a)]        # noqa: E731
    splits, fraction, seed = 20, 0.7, 11
    report = predictor_evaluation.evaluate_over_splits(
        archs, y, {"linear_true": lambda: predictors.LinearOnFeatures(features),
                   "random": RandomPredictor}, splits, fraction, seed)
    linear, random = report["linear_true"], report["random"]
    assert report["train"] == 105 and report["test"] == 45
    for m in (linear, random):
        assert m["splits"] == splits and len(m["kendall_tau_per_split"]) == splits
        assert m["kendall_tau_sd"] > 0 and m["spearman_sd"] > 0
    assert linear["kendall_tau"] > 0.9 and linear["spearman"] > 0.97
    assert abs(random["kendall_tau"]) < 0.1 and abs(random["spearman"]) < 0.15
    # Independent reference: least squares by numpy, ranked by scipy, on the same splits.
    x = np.array([np.append(features(a), 1.0) for a in archs])
    taus, rhos = [], []
    for train, test in predictor_evaluation.split_indices(len(archs), splits, fraction, seed):
        coef = np.linalg.lstsq(x[train], y[train], rcond=None)[0]
        taus.append(stats.kendalltau(x[test] @ coef, y[test])[0])
        rhos.append(stats.spearmanr(x[test] @ coef, y[test])[0])
    np.testing.assert_allclose(linear["kendall_tau_per_split"], taus, atol=1e-9)
    assert linear["kendall_tau"] == pytest.approx(np.mean(taus), abs=1e-9)
    assert linear["kendall_tau_sd"] == pytest.approx(np.std(taus, ddof=1), abs=1e-9)
    assert linear["spearman"] == pytest.approx(np.mean(rhos), abs=1e-9)


def test_targets_are_judged_on_the_rows_that_have_them():
    archs, y, values = synthetic_rows(n=40)
    rows = [{"arch": list(a), "accuracy": float(t), "latency_ms": (float(t) if k < 5 else None)}
            for k, (a, t) in enumerate(zip(archs, y))]
    factories = {"accuracy": {"random": RandomPredictor},
                 "latency_ms": {"random": RandomPredictor}}
    report = predictor_evaluation.evaluate_targets(rows, factories, 4, 0.7, 0, log=lambda m: 0)
    assert set(report) == {"accuracy"}                    # 5 latency rows: 4 train, 1 test
    assert report["accuracy"]["train"] == 28 and report["accuracy"]["test"] == 12
    assert report["accuracy"]["random"]["splits"] == 4


def _identical_block_graphs(nsr, with_features=True):
    """Every (position, option) block is the same op graph; only NSR and position differ."""
    def block(variables, x):
        y = jax.lax.conv_general_dilated(x, variables["w"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.relu(y) + x
    graph = block_graph.block_graph(block, {"w": jnp.ones((3, 3, 4, 4))}, jnp.ones((1, 8, 8, 4)))
    graphs, table = [], []
    for p, row in enumerate(nsr):
        table.append([])
        for value in row:
            table[-1].append(len(graphs))
            graphs.append(block_graph.with_block_features(graph, value, p, len(nsr))
                          if with_features else graph)
    return block_graph.batch_graphs(graphs), table


def test_block_features_tell_equal_graphs_apart_by_position_and_nsr():
    nsr = [[0.1, 0.4], [0.1, 0.4], [0.1, 0.4]]       # option 0 equal at every position
    graphs, table = _identical_block_graphs(nsr)
    plain_graphs, _ = _identical_block_graphs(nsr, with_features=False)
    encoder = gnn.BlockEncoder(hidden=8, embed_dim=4, layers=1)
    params = encoder.init(jax.random.key(0), jax.tree.map(jnp.asarray, graphs))
    embedded = np.asarray(encoder.apply(params, jax.tree.map(jnp.asarray, graphs)))
    plain = np.asarray(encoder.apply(params, jax.tree.map(jnp.asarray, plain_graphs)))
    assert np.abs(plain - plain[0]).max() < 1e-6      # without features: all the same
    same_nsr_other_position = embedded[table[0][0]] - embedded[table[1][0]]
    same_position_other_nsr = embedded[table[0][0]] - embedded[table[0][1]]
    assert np.abs(same_nsr_other_position).max() > 1e-4
    assert np.abs(same_position_other_nsr).max() > 1e-4


@pytest.mark.slow
def test_gnn_ranks_by_nsr_when_the_graphs_alone_cannot():
    nsr = [[0.05, 0.30], [0.10, 0.20], [0.02, 0.50]]
    archs = [tuple(int(b) for b in np.binary_repr(k, 3)) for k in range(8)]
    truth = np.array([-sum(nsr[p][k] for p, k in enumerate(a)) for a in archs])
    kw = dict(hidden=8, embed_dim=4, layers=1, steps=150, learning_rate=1e-2)
    graphs, table = _identical_block_graphs(nsr)
    featured = predictors.GraphPredictor(graphs, table, **kw).fit(archs, truth)
    assert stats.kendalltau(featured.predict(archs), truth)[0] > 0.9
    plain_graphs, _ = _identical_block_graphs(nsr, with_features=False)
    plain = predictors.GraphPredictor(plain_graphs, table, **kw).fit(archs, truth)
    predicted = plain.predict(archs)
    assert np.ptp(predicted) < 1e-6 * max(1.0, np.abs(predicted).max())   # a constant
