"""Prune, then quantize: the tiny learned-gate pruning run saves what rebuilds its pruned
model (keep sets, fine-tuned variables), a rerun resumes instead of retraining, and the
quantization experiment takes the pruned model as its float model."""
import json

import numpy as np
import pytest

import run
from core import train as train_lib
from data import pipeline
from experiments import registry
from quant import target_cpu


@pytest.mark.slow
def test_prune_then_quantize_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("TEACHER_CACHE", str(tmp_path / "teachers"))
    workdir = tmp_path / "prune"
    args = ["--exp=prune_resnet20_tiny", f"--workdir={workdir}",
            "--exp.latency_table_path=" + str(tmp_path / "tables.json")]
    assert run.main(args) == 0
    keep = json.loads((workdir / "keep.json").read_text())
    result = json.loads((workdir / "result.json").read_text())
    assert (workdir / "gates" / "checkpoints").is_dir()

    # A rerun restores the finished gate training: same keep sets, same fine-tuned model.
    assert run.main(args) == 0
    assert json.loads((workdir / "keep.json").read_text()) == keep

    from experiments import learned_pruning
    prune_config = registry.load("prune_resnet20_tiny")
    fn, variables, summary, dataset = learned_pruning.load_pruned(prune_config, str(workdir))
    rebuilt = train_lib.evaluate(fn, variables, dataset, "test")["accuracy"]
    np.testing.assert_allclose(rebuilt, result["accuracy_after_finetune"], atol=1e-6)
    assert summary["test_accuracy"] == result["accuracy_after_finetune"]

    from experiments import quantization as experiment
    config = registry.load("quant_pruned_resnet20", [
        ("pruned_experiment", "prune_resnet20_tiny"), ("pruned_workdir", str(workdir)),
        ("teacher.tiny", "True"), ("qat.steps", "2"), ("qat.batch_size", "32"),
        ("calibration_images", "64"), ("batch_size", "32"), ("eval_limit", "128"),
        ("sensitivity", "False"), ("latency_runs", "3"), ("latency_batches", "(1,)")])
    quantized = experiment.main(config, str(tmp_path / "quant"))
    assert "pruned" in quantized["model"]
    images = pipeline.normalize(dataset.test[0][:128], dataset.mean, dataset.std)
    expected = float(np.mean(np.argmax(fn(variables, images), -1) == dataset.test[1][:128]))
    assert quantized["accuracy"]["float"] == pytest.approx(expected, abs=1e-6)  # BN folded
    assert quantized["profile"]["target_cpu"] == target_cpu.target_kind()
    for parity in quantized["parity"].values():
        assert parity["integer_ops"].get("QLinearConv", 0) > 0
        # Fidelity that holds on CPUs with and without VNNI (7-bit weights on the latter):
        # onnxruntime's int8 outputs within 5% of the output scale of the fake-quant model
        # (without the adjustment an AVX2 CPU gave 0.164 on a scale of 0.28), and top-1
        # agreement on the rows that are not near-ties of this briefly trained teacher.
        assert parity["max_abs_error"] <= 0.05 * parity["output_scale"], parity
        assert parity["decided_rows"] >= 16 and parity["decided_agreement"] >= 0.95, parity
