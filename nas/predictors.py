"""Predictors of accuracy, latency and memory for architectures of the space, and the
baselines they must beat, with the ranking metrics used to judge them.

All predictors answer ``fit(archs, y)`` / ``predict(archs)`` on architectures (tuples of
option indices); ``fit`` starts from scratch every time (same initialisation from ``seed``),
so one instance can be refitted on many train/test splits (``nas.predictor_evaluation``):

- ``GraphPredictor``: the jraph GNN embedding of every block (``nas.gnn``; each block graph
  carries its measured NSR and position as graph-level features) concatenated over
  positions, then an MLP; trained end to end with Adam.
- ``LinearOnFeatures``: least squares on per-architecture features; with the per-block
  distillation losses as features it is DONNA's accuracy predictor, with FLOPs alone it is
  the "FLOPs are all you need" baseline.
- ``OneHotMLP``: an MLP on the one-hot encoding of the choices (the OFA-style encoding).

Targets are standardized (and log-transformed when ``log_target``: latency and memory are
positive and multiplicative). Metrics: Kendall tau and Spearman rho (ranking), the fraction
within 10% of the truth and the RMSE.
"""
from typing import Callable, Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

from nas.gnn import MLP, GraphPredictorNet


def ranking_metrics(predicted, truth) -> Dict[str, float]:
    predicted, truth = np.asarray(predicted, np.float64), np.asarray(truth, np.float64)
    rel = np.abs(predicted - truth) / np.maximum(np.abs(truth), 1e-12)
    return {"kendall_tau": float(stats.kendalltau(predicted, truth)[0]),
            "spearman": float(stats.spearmanr(predicted, truth)[0]),
            "within_10pct": float(np.mean(rel <= 0.10)),
            "rmse": float(np.sqrt(np.mean((predicted - truth) ** 2)))}


class _Standardizer:
    def __init__(self, y, log: bool):
        self.log = log
        t = np.log(y) if log else np.asarray(y, np.float64)
        self.mean, self.std = float(t.mean()), float(t.std() + 1e-12)

    def forward(self, y):
        t = np.log(y) if self.log else np.asarray(y, np.float64)
        return ((t - self.mean) / self.std).astype(np.float32)

    def inverse(self, z):
        t = np.asarray(z, np.float64) * self.std + self.mean
        return np.exp(t) if self.log else t


def _trainer(loss_fn: Callable, steps: int, learning_rate: float, weight_decay: float):
    """``train(params, *data) -> params``: every Adam step in one jitted ``fori_loop``, with
    the data as arguments, so refitting on other rows of the same count (the split
    evaluation's 20 refits) reuses one compiled program instead of tracing a new closure."""
    tx = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps), weight_decay=weight_decay)

    @jax.jit
    def train(params, *data):
        def step(_, carry):
            params, opt_state = carry
            grads = jax.grad(loss_fn)(params, *data)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state
        return jax.lax.fori_loop(0, steps, step, (params, tx.init(params)))[0]
    return train


class GraphPredictor:
    """GNN predictor. ``graphs``: one batched GraphsTuple of every block option;
    ``graph_index[p][k]``: index in it of option k at position p."""

    def __init__(self, graphs, graph_index: Sequence[Sequence[int]], log_target=False,
                 hidden=32, embed_dim=16, layers=3, steps=1500, learning_rate=3e-3,
                 weight_decay=1e-4, seed=0):
        self.graphs = jax.tree.map(jnp.asarray, graphs)
        self.table = [np.asarray(row) for row in graph_index]
        self.net = GraphPredictorNet(hidden, embed_dim, layers, 1)
        self.log_target, self.seed = log_target, seed

        def loss_fn(params, graphs, index, target):
            return jnp.mean(jnp.square(self.net.apply(params, graphs, index)[:, 0] - target))
        self._train = _trainer(loss_fn, steps, learning_rate, weight_decay)

    def _index(self, archs):
        return jnp.asarray([[self.table[p][k] for p, k in enumerate(a)] for a in archs])

    def fit(self, archs, y):
        self.scale = _Standardizer(y, self.log_target)
        target = jnp.asarray(self.scale.forward(y))
        index = self._index(archs)
        params = self.net.init(jax.random.key(self.seed), self.graphs, index[:1])
        self.params = self._train(params, self.graphs, index, target)
        return self

    def predict(self, archs):
        z = self.net.apply(self.params, self.graphs, self._index(archs))[:, 0]
        return self.scale.inverse(np.asarray(z))

    def embed(self, archs):
        """Architecture embeddings (concatenated block embeddings)."""
        return np.asarray(self.net.apply(self.params, self.graphs, self._index(archs),
                                         method=GraphPredictorNet.embed))


class LinearOnFeatures:
    """Least squares (with intercept and a small ridge) on features of an architecture."""

    def __init__(self, features: Callable, log_target=False, ridge=1e-6):
        self.features, self.log_target, self.ridge = features, log_target, ridge

    def _design(self, archs):
        x = np.asarray([self.features(a) for a in archs], np.float64).reshape(len(archs), -1)
        return np.concatenate([x, np.ones((len(x), 1))], 1)

    def fit(self, archs, y):
        self.scale = _Standardizer(y, self.log_target)
        x = self._design(archs)
        t = self.scale.forward(y).astype(np.float64)
        self.coef = np.linalg.solve(x.T @ x + self.ridge * np.eye(x.shape[1]), x.T @ t)
        return self

    def predict(self, archs):
        return self.scale.inverse(self._design(archs) @ self.coef)


class OneHotMLP:
    """MLP on the concatenated one-hot choices of every position."""

    def __init__(self, sizes: Sequence[int], log_target=False, steps=1500, learning_rate=3e-3,
                 weight_decay=1e-4, seed=0):
        self.sizes = list(sizes)
        self.net = MLP((64, 64, 1))
        self.log_target, self.seed = log_target, seed

        def loss_fn(params, x, target):
            return jnp.mean(jnp.square(self.net.apply(params, x)[:, 0] - target))
        self._train = _trainer(loss_fn, steps, learning_rate, weight_decay)

    def _onehot(self, archs):
        out = np.zeros((len(archs), sum(self.sizes)), np.float32)
        offsets = np.cumsum([0] + self.sizes[:-1])
        for i, a in enumerate(archs):
            out[i, offsets + np.asarray(a)] = 1
        return jnp.asarray(out)

    def fit(self, archs, y):
        self.scale = _Standardizer(y, self.log_target)
        x, target = self._onehot(archs), jnp.asarray(self.scale.forward(y))
        params = self.net.init(jax.random.key(self.seed), x[:1])
        self.params = self._train(params, x, target)
        return self

    def predict(self, archs):
        return self.scale.inverse(np.asarray(self.net.apply(self.params,
                                                            self._onehot(archs))[:, 0]))


__all__ = ["ranking_metrics", "GraphPredictor", "LinearOnFeatures", "OneHotMLP"]
