"""Seed summaries and the validation-split choice of the comparisons' "ours" variant."""
import numpy as np
import pytest

from benchmarks import seeds


def _row(method, target, seed, test, validation, ms):
    return {"method": method, "target": target, "seed": seed, "onnx": f"{method}{seed}.onnx",
            "accuracy_after_finetune": test, "validation_accuracy": validation,
            "batch1_median_ms": ms}


ROWS = [_row("a", 2, 0, 0.90, 0.91, 1.0), _row("b", 2, 0, 0.95, 0.89, 2.0),
        _row("a", 2, 1, 0.92, 0.93, 3.0), _row("b", 2, 1, 0.94, 0.90, 4.0),
        {"method": "teacher", "target": 1, "accuracy_after_finetune": 0.93}]


def test_aggregate_means_and_sample_sd_per_method_and_target():
    summary = seeds.aggregate(ROWS)
    assert [(r["method"], r["target"]) for r in summary] == [("a", 2), ("b", 2), ("teacher", 1)]
    a = summary[0]
    assert a["accuracy_after_finetune"] == pytest.approx(0.91)
    assert a["accuracy_after_finetune_sd"] == pytest.approx(np.std([0.90, 0.92], ddof=1))
    assert a["batch1_median_ms"] == pytest.approx(2.0)       # means for other numbers
    assert "batch1_median_ms_sd" not in a                      # spread only where listed
    assert a["seeds"] == [0, 1] and a["onnx"] == "a0.onnx"
    assert summary[2]["accuracy_after_finetune_sd"] == 0.0 and summary[2]["seeds"] == [0]


def test_choice_reads_validation_not_test():
    summary = seeds.aggregate(ROWS)
    # b has the better test accuracy (0.945 vs 0.91); a the better validation (0.92 vs 0.895).
    assert seeds.chosen_on_validation(summary, ("a", "b"), 2) == "a"
    with pytest.raises(ValueError, match="validation"):
        seeds.chosen_on_validation(summary, ("a", "b"), 4)


def test_mean_sd_text():
    summary = seeds.aggregate(ROWS)
    assert seeds.mean_sd(summary[0], "accuracy_after_finetune") == "91.00 +- 1.41"
    assert seeds.mean_sd(summary[2], "accuracy_after_finetune") == "93.00"
