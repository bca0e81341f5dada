"""Predictors judged over many random train/test splits, not one.

With ~30 held-out architectures, one split's Kendall tau has a standard error of ~0.13: the
GNN, DONNA's linear model on NSRs and the FLOPs baseline all fall within one error of each
other, so a single split cannot say which ranks better. Here every predictor is refitted on
``splits`` seeded random splits (the same splits for every predictor of a target, so the
comparison is paired) and judged on each split's held-out rows; the report gives the mean and
the sample sd over splits of Kendall tau and Spearman rho (and the mean of the other metrics
of ``nas.predictors.ranking_metrics``), plus the per-split values.

The sd is the spread of one split's figure (how far a single 70/30 judgement can fall from
the mean), not a standard error of the mean: the splits share rows, so their taus correlate.

A predictor factory is a callable returning a fresh predictor (``fit(archs, y)`` /
``predict(archs)``, ``fit`` starting from scratch); it is called once per target and the
instance refitted on every split, so jitted trainers compile once per training-set size.
"""
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from nas.predictors import ranking_metrics

MIN_TRAIN, MIN_TEST = 4, 3          # fewer rows than this: a target is not judged
SPREAD_METRICS = ("kendall_tau", "spearman")


def split_indices(n: int, splits: int, train_fraction: float,
                  seed: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    """``splits`` (train, test) index pairs over ``n`` rows: disjoint, covering every row,
    ``round(n * train_fraction)`` training rows each (at least one row on each side), a
    pure function of ``seed``."""
    if n < 2 or splits < 1:
        raise ValueError(f"need n >= 2 rows and splits >= 1, got n={n}, splits={splits}")
    n_train = min(max(int(round(n * train_fraction)), 1), n - 1)
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(splits):
        order = rng.permutation(n)
        pairs.append((np.sort(order[:n_train]), np.sort(order[n_train:])))
    return pairs


def summarize(per_split: Sequence[Dict[str, float]]) -> Dict:
    """Metrics of every split -> mean of each metric under its own name, ``<name>_sd``
    (sample sd, ddof 1) and ``<name>_per_split`` for Kendall tau and Spearman, and the
    number of splits."""
    out: Dict = {"splits": len(per_split)}
    for name in per_split[0]:
        values = np.asarray([m[name] for m in per_split], np.float64)
        out[name] = float(values.mean())
        if name in SPREAD_METRICS:
            out[f"{name}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            out[f"{name}_per_split"] = values.tolist()
    return out


def evaluate_over_splits(archs: Sequence[tuple], y, factories: Dict[str, Callable],
                         splits: int, train_fraction: float, seed: int) -> Dict:
    """Every predictor of ``factories`` fitted and judged on the same ``splits`` random
    splits of (archs, y): {"train": n, "test": n, name: summary of ``summarize``}."""
    archs, y = [tuple(a) for a in archs], np.asarray(y, np.float64)
    pairs = split_indices(len(archs), splits, train_fraction, seed)
    report: Dict = {"train": len(pairs[0][0]), "test": len(pairs[0][1])}
    for name, factory in factories.items():
        model = factory()
        per_split = []
        for train, test in pairs:
            model.fit([archs[i] for i in train], y[train])
            per_split.append(ranking_metrics(model.predict([archs[i] for i in test]), y[test]))
        report[name] = summarize(per_split)
    return report


def evaluate_targets(rows: Sequence[dict], factories: Dict[str, Dict[str, Callable]],
                     splits: int, train_fraction: float, seed: int, log=print) -> Dict:
    """Per target (a key of ``factories`` and of the rows), the split evaluation over the
    rows that have it (``{"arch": [...], target: value}``); targets with too few rows for
    ``MIN_TRAIN`` training and ``MIN_TEST`` held-out rows are left out."""
    report = {}
    for target, models in factories.items():
        usable = [r for r in rows if r.get(target) is not None]
        n_train = int(round(len(usable) * train_fraction))
        if n_train < MIN_TRAIN or len(usable) - n_train < MIN_TEST:
            continue
        report[target] = evaluate_over_splits([r["arch"] for r in usable],
                                              [r[target] for r in usable], models, splits,
                                              train_fraction, seed)
        log(f"{target} over {splits} splits: " + ", ".join(
            f"{name} tau={m['kendall_tau']:.3f}+-{m['kendall_tau_sd']:.3f}"
            for name, m in report[target].items() if isinstance(m, dict)))
    return report


__all__ = ["split_indices", "summarize", "evaluate_over_splits", "evaluate_targets"]
