"""benchmarks/nas.py's verdict: the searched front against each baseline at equal accuracy."""
import pytest

from benchmarks import nas as benchmark


def _front(*rows):
    return [{"test_accuracy": a, "latency_ms": ms, "choices": [f"c{i}"]}
            for i, (a, ms) in enumerate(rows)]


def test_each_baseline_meets_the_fastest_front_model_at_least_as_accurate():
    front = _front((0.90, 0.30), (0.92, 0.40), (0.93, 0.60))
    baselines = [{"name": "x0.5", "test_accuracy": 0.91, "latency_ms": 0.48},
                 {"name": "x0.75", "test_accuracy": 0.925, "latency_ms": 0.66},
                 {"name": "teacher-like", "test_accuracy": 0.95, "latency_ms": 0.7}]
    rows = benchmark.speedups_at_equal_accuracy(front, baselines)
    assert rows[0]["front_latency_ms"] == 0.40 and rows[0]["speedup"] == pytest.approx(1.2)
    assert rows[1]["front_latency_ms"] == 0.60 and rows[1]["speedup"] == pytest.approx(1.1)
    assert rows[2]["speedup"] is None
    gap = {"gain": 0.0123}
    assert benchmark.headline(rows, gap) == {"speedup_vs_best_baseline": None,
                                             "no_finetune_gap_pt": pytest.approx(1.23)}
    assert benchmark.headline(rows[:2], gap)["speedup_vs_best_baseline"] == pytest.approx(1.1)
