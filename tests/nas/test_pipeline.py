"""The NAS experiment end to end on the tiny config (untrained tiny ResNet, 2 choices)."""
import json
import os

import pytest

from core import config as config_lib


@pytest.mark.slow
def test_tiny_pipeline_runs_end_to_end(tmp_path):
    from nas import pipeline
    cfg = config_lib.load("nas_fmnist_tiny", [])
    results = pipeline.main(cfg, str(tmp_path))
    assert os.path.exists(tmp_path / "pareto.png") and os.path.exists(tmp_path / "results.json")
    assert len(results["students"]) == 6
    assert set(results["predictors"]) == {"accuracy", "latency_ms", "peak_activation_bytes"}
    assert results["front"] and all(r["parity_max_rel_error"] < 1e-4 for r in results["front"])
    assert 0.0 <= results["claim_check"]["finetuned_test_accuracy"] <= 1.0
    # int8 friendliness (third objective): one lint penalty per option, additive per arch.
    assert results["int8_profile"] and len(results["int8_penalties"]) == 3 * 3
    for row in results["front"]:
        assert row["int8_penalty"] == sum(
            results["int8_penalties"][f"{p}:{c}"] for p, c in enumerate(row["choices"]))
    saved = json.load(open(tmp_path / "results.json"))
    assert saved["chosen"]["arch"] == results["chosen"]["arch"]
    # A second run reuses the distilled students and the measured samples.
    again = pipeline.main(cfg, str(tmp_path))
    assert again["students"] == results["students"]


def test_cached_stages_are_keyed_by_the_settings_they_depend_on():
    from core import config as config_lib
    from nas import pipeline
    base = config_lib.load("nas_fmnist")
    longer = config_lib.load("nas_fmnist", [("distill.steps", "1000")])
    quiet = config_lib.load("nas_fmnist", [("show_progress", "False")])
    searched = config_lib.load("nas_fmnist", [("search.generations", "5")])
    path = pipeline.sampled_path(base, "w")
    assert pipeline.sampled_path(longer, "w") != path       # other students: re-measure
    assert pipeline.sampled_path(quiet, "w") == path
    assert pipeline.sampled_path(searched, "w") == path     # search settings: reuse
    assert (pipeline.stage_hash(searched, *searched.keys())
            != pipeline.stage_hash(base, *base.keys()))
    # The claim-check fine-tune never resumes another architecture's checkpoints.
    assert pipeline.finetune_dir(base, "w", (0, 1)) != pipeline.finetune_dir(base, "w", (1, 0))
    assert pipeline.finetune_dir(base, "w", (0, 1)) != pipeline.finetune_dir(longer, "w", (0, 1))
