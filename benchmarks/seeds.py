"""Repeated runs of a benchmark row, summarised: mean and standard deviation over seeds, and
the variant a benchmark may call "ours" chosen on the validation split, never on test.

A single seed of a 400-step fine-tune moves accuracy by a few tenths of a point, the size
of most differences the comparisons report; a table of means with their spread says which
differences are real. Shared by the comparisons that repeat rows (Torch-Pruning, ...).
"""
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

from quant.comparison import choose_best

SPREAD_FIELDS = ("accuracy_after_finetune", "validation_accuracy", "accuracy_after_pruning",
                 "speedup_batch1", "speedup_batch32")


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def aggregate(rows: Sequence[dict], keys: Tuple[str, ...] = ("method", "target")) -> List[dict]:
    """One row per ``keys`` value, in first-seen order: numeric fields averaged over the
    repeats, ``<field>_sd`` (sample standard deviation, 0 for one repeat) for the
    ``SPREAD_FIELDS``, ``seeds`` the repeats' seeds; other fields from the first repeat."""
    groups: Dict[tuple, List[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    summary = []
    for repeats in groups.values():
        row = dict(repeats[0])
        for field, value in repeats[0].items():
            values = [r[field] for r in repeats if _numeric(r.get(field))]
            if field in keys or not _numeric(value) or len(values) != len(repeats):
                continue
            row[field] = float(np.mean(values))
            if field in SPREAD_FIELDS:
                row[f"{field}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        row["seeds"] = [r.get("seed", 0) for r in repeats]
        summary.append(row)
    return summary


def chosen_on_validation(rows: Iterable[dict], candidates: Sequence[str], target) -> str:
    """The candidate method with the best mean validation accuracy at ``target``: the one
    variant a comparison may present as ours (test accuracy is read only after the choice)."""
    scored = {r["method"]: r["validation_accuracy"] for r in rows
              if r["target"] == target and r["method"] in candidates}
    if not scored:
        raise ValueError(f"no row of {list(candidates)} at target {target} has a validation "
                         "accuracy to choose by")
    return choose_best(scored)


def mean_sd(row: dict, field: str, scale: float = 100.0, digits: int = 2) -> str:
    """``mean +- sd`` of a summarised field (just the mean for a single repeat)."""
    mean = row[field] * scale
    sd = row.get(f"{field}_sd", 0.0) * scale
    return f"{mean:.{digits}f}" + (f" +- {sd:.{digits}f}" if len(row.get("seeds", [])) > 1 else "")
