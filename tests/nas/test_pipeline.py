"""The NAS experiment end to end on the tiny config (untrained tiny ResNet, 2 choices)."""
import json
import os

import numpy as np
import pytest

from data import pipeline as data_pipeline
from experiments import registry


@pytest.mark.slow
def test_tiny_pipeline_runs_end_to_end(tmp_path):
    from experiments import nas_search as pipeline
    import importlib.util
    has_tensorflow = importlib.util.find_spec("tensorflow") is not None   # .tflite export
    cfg = registry.load("nas_fmnist_tiny", [] if has_tensorflow else [("search.devices", "[]")])
    results = pipeline.main(cfg, str(tmp_path))
    assert os.path.exists(tmp_path / "pareto.png") and os.path.exists(tmp_path / "results.json")
    assert len(results["students"]) == 6
    assert set(results["predictors"]) == {"accuracy", "latency_ms", "peak_activation_bytes"}
    # The target is the recalibrated accuracy; three sampled architectures fine-tuned briefly.
    sampled = json.load(open(results["sampled_path"]))
    assert results["accuracy_target"] == "recalibrated"
    assert all(r["accuracy"] == r["recalibrated_accuracy"] for r in sampled)
    agreement = results["finetune_agreement"]
    assert agreement["architectures"] == 3 and len(agreement["finetuned_accuracy"]) == 3
    assert {"tau_assembled_accuracy", "tau_recalibrated_accuracy", "tau_predictor"} \
        <= set(agreement)
    assert results["front"] and all(r["parity_max_rel_error"] < 1e-4 for r in results["front"])
    # The accuracies are meaningless (untrained teacher) but must agree with recomputations.
    claim, chosen = results["claim_check"], results["chosen"]
    assert claim["arch"] == chosen["arch"]
    assert claim["gain"] == pytest.approx(claim["finetuned_test_accuracy"]
                                          - claim["assembled_test_accuracy"], abs=1e-12)
    fn, variables, dataset, _ = pipeline.load_teacher(cfg)
    n_test = len(dataset.test[1])
    # Two evaluation paths (the search's and the training loop's) on the same assembly.
    assert abs(claim["assembled_test_accuracy"] - chosen["test_accuracy"]) <= 1.5 / n_test
    # The all-teacher assembly of distilled-block options is the teacher itself.
    logits = fn(variables, data_pipeline.normalize(dataset.test[0], dataset.mean, dataset.std))
    teacher_accuracy = float(np.mean(np.argmax(np.asarray(logits), -1) == dataset.test[1]))
    assert abs(results["teacher_measured"]["test_accuracy"] - teacher_accuracy) <= 1.5 / n_test
    # int8 friendliness (third objective): one lint penalty per option, additive per arch.
    assert results["int8_profile"] and len(results["int8_penalties"]) == 3 * 3
    for row in results["front"]:
        assert row["int8_penalty"] == sum(
            results["int8_penalties"][f"{p}:{c}"] for p, c in enumerate(row["choices"]))
    if has_tensorflow:
        check_device_search(results, teacher_accuracy, n_test, tmp_path)
    saved = json.load(open(tmp_path / "results.json"))
    assert saved["chosen"]["arch"] == results["chosen"]["arch"]
    # A second run reuses the distilled students and the measured samples.
    again = pipeline.main(cfg, str(tmp_path))
    assert again["students"] == results["students"]
    assert again["device_search"]["choices"] == results["device_search"]["choices"]


def check_device_search(results, teacher_accuracy, n_test, workdir):
    """Each device's choice timed on both devices, the verdict read from those latencies,
    the int8 comparison's primary choice the same architecture."""
    study = results["device_search"]
    assert study["devices"] == ["ort-cpu-1t", "litert-cpu-1t"]
    assert os.path.exists(workdir / "devices.png") and os.path.exists(workdir / "devices.md")
    assert abs(study["teacher"]["test_accuracy"] - teacher_accuracy) <= 1.5 / n_test
    for device, choice in study["choices"].items():
        assert set(choice["latency_ms"]) == set(study["devices"])
        assert all(v > 0 for v in choice["latency_ms"].values())
        assert choice["predicted_accuracy"] >= study["accuracy_target"] - 1e-9 or \
            study["same_choice"]
        verdict = study["verdict"][device]
        assert verdict["own_latency_ms"] == choice["latency_ms"][device]
        for other, latency in verdict["other_latency_ms"].items():
            assert latency == study["choices"][other]["latency_ms"][device]
    extra = study["extra_devices"]["litert-cpu-1t"]
    assert "block_table" in extra["latency_predictors"]
    int8 = study["int8_objective"]
    assert int8["with_objective"]["arch"] == study["choices"]["ort-cpu-1t"]["arch"]
    for label in ("with_objective", "without_objective"):
        assert 0.0 <= int8[label]["int8_test_accuracy"] <= 1.0


def test_cached_stages_are_keyed_by_the_settings_they_depend_on():
    from experiments import nas_search as pipeline
    base = registry.load("nas_fmnist")
    longer = registry.load("nas_fmnist", [("distill.steps", "1000")])
    quiet = registry.load("nas_fmnist", [("show_progress", "False")])
    searched = registry.load("nas_fmnist", [("search.generations", "5")])
    path = pipeline.sampled_path(base, "w")
    assert pipeline.sampled_path(longer, "w") != path       # other students: re-measure
    assert pipeline.sampled_path(quiet, "w") == path
    assert pipeline.sampled_path(searched, "w") == path     # search settings: reuse
    assert (pipeline.stage_hash(searched, *searched.keys())
            != pipeline.stage_hash(base, *base.keys()))
    # The claim-check fine-tune never resumes another architecture's checkpoints.
    assert pipeline.finetune_dir(base, "w", (0, 1)) != pipeline.finetune_dir(base, "w", (1, 0))
    assert pipeline.finetune_dir(base, "w", (0, 1)) != pipeline.finetune_dir(longer, "w", (0, 1))
