"""The quant_resnet20 experiment end to end on a tiny, briefly trained teacher."""
import os

import pytest

from core import config as config_lib


@pytest.mark.slow
def test_quant_experiment_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("TEACHER_CACHE", str(tmp_path / "teachers"))
    from quant import experiment
    config = config_lib.load("quant_resnet20", [
        ("teacher.tiny", "True"), ("teacher.data_limit", "256"),
        ("teacher.train.steps", "4"), ("teacher.train.batch_size", "64"),
        ("qat.steps", "2"), ("qat.batch_size", "64"), ("calibration_images", "128"),
        ("eval_limit", "128"), ("latency_runs", "3"), ("latency_batches", "(1,)")])
    result = experiment.main(config, str(tmp_path))
    assert set(result["accuracy"]) == {
        "float", "ptq_per_tensor", "ptq_per_tensor_cle_bc", "ptq_per_channel",
        "ptq_per_channel_cle_bc", "qat"}
    assert set(result["onnx_accuracy"]) == {"float", f"ours_{result['best_ptq']}", "ours_qat",
                                            "ort_quantize_static"}
    for parity in result["parity"].values():
        assert parity["integer_ops"].get("QLinearConv", 0) > 0
        assert parity["top1_agreement"] >= 0.9
    assert os.path.exists(tmp_path / "result.json")
