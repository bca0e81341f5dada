"""The real-model showcase (experiments/real_model_pruning.py): its fidelity metrics against
hand-computed values, and the whole job end to end on the real selfie segmenter in a few
steps (prune_selfie_tiny: real calibration and held-out images, gates, prune, fine-tune,
ONNX export with parity on a real image, onnxruntime latency, result files and PNG)."""
import importlib.util
import json

import numpy as np
import pytest

import run
from experiments import real_model_pruning as showcase
from models import real_tflite_models


def test_mask_iou_counts_all_pixels_of_all_images():
    reference = np.zeros((3, 4, 4, 1), np.float32)
    reference[0, :2] = 0.9                    # image 0: 8 foreground pixels
    outputs = np.zeros_like(reference)
    outputs[0, :1] = 0.8                      # 4 of them found
    outputs[1, 0, 0] = 0.7                    # image 1: one stray pixel, no person in it
    assert showcase.mask_iou(outputs, reference) == pytest.approx(4 / 9)
    per_image = showcase.per_image_iou(outputs, reference)
    assert per_image[0] == pytest.approx(0.5) and per_image[1] == 0.0
    assert np.isnan(per_image[2])             # both empty: no IoU to speak of
    assert showcase.mask_iou(reference, reference) == 1.0


def test_top1_agreement():
    reference = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    outputs = np.array([[0.2, 0.8], [0.4, 0.6], [0.1, 0.9]])
    assert showcase.top1_agreement(outputs, reference) == pytest.approx(2 / 3)


def test_unknown_model_source_is_a_clear_error():
    import ml_collections
    with pytest.raises(ValueError, match="choose one of"):
        showcase.load_model(ml_collections.ConfigDict(dict(source="caffe", name="x", outputs=[], head="sigmoid")))


def _text_map(rows):
    """A 64x96 probability map with a 40x8 text line (probability 0.9) at each row."""
    probability = np.zeros((64, 96), np.float32)
    for row in rows:
        probability[row:row + 8, 20:60] = 0.9
    return probability


def test_box_f1_is_recorded_beside_the_fidelity_when_the_config_asks():
    import ml_collections
    config = ml_collections.ConfigDict(dict(fidelity="mask_iou", extra_fidelity=("box_f1",)))
    # Original: two lines on image 0, one on image 1. Compressed: image 0's lines found,
    # image 1's missed, a stray line on image 2 -> 2 matches, 3 found, 3 expected.
    reference = np.stack([_text_map([10, 40]), _text_map([20]), _text_map([])])[:, None]
    outputs = np.stack([_text_map([10, 40]), _text_map([]), _text_map([30])])[:, None]
    figures = showcase.extra_measures(config, outputs, reference)
    assert figures["matched_boxes"] == 2
    assert figures["boxes"] == 3 and figures["reference_boxes"] == 3
    assert figures["box_f1"] == pytest.approx(2 / 3)
    assert showcase.extra_measures(config, reference, reference)["box_f1"] == 1.0
    table = showcase.extra_measures_table({"after_pruning": figures,
                                           "after_finetune": figures})
    assert "| after finetune | 0.6667 | 0.6667 | 0.6667 | 2 | 3 | 3 |" in table
    assert showcase.extra_measures(ml_collections.ConfigDict(dict(fidelity="mask_iou")),
                                   outputs, reference) == {}


def test_unknown_extra_measure_fails_before_training():
    import ml_collections
    with pytest.raises(ValueError, match="choose from"):
        showcase.check_extra_measures(ml_collections.ConfigDict(dict(extra_fidelity=["f2"])))


def test_detector_config_records_box_f1():
    from pruning.configs import prune_ppocr_det_2x
    config = prune_ppocr_det_2x.get_config()
    assert "box_f1" in config.extra_fidelity
    showcase.check_extra_measures(config)


@pytest.mark.slow
def test_selfie_showcase_end_to_end(tmp_path):
    try:
        real_tflite_models.path("selfie_segmentation")
    except real_tflite_models.ModelNotFetched as error:
        pytest.skip(str(error))
    workdir = tmp_path / "run"
    # A fast gate learning rate so that 16 steps reach the FLOPs budget (the showcase's
    # own settings take 300). With 8 steps the pruned model's output collapsed to ~1e-9,
    # where the export's relative parity check is meaningless (measured).
    assert run.main(["--exp=prune_selfie_tiny", f"--workdir={workdir}",
                     "--exp.gates.steps=16", "--exp.gates.gate_learning_rate=0.3",
                     "--exp.gates.checkpoint_every=8", "--exp.gates.fit_budget=True"]) == 0
    result = json.loads((workdir / "result.json").read_text())
    assert result["before"]["flops"] == 200_636_136     # the real model at 256x256, batch 1
    # Stepped down to the budget (half the FLOPs) after rounding to multiples of 8.
    assert 1 / (0.5 * 1.02) <= result["flops_reduction"] < 3.0, result["flops_reduction"]
    assert result["params_reduction"] > 1.2
    assert result["after"]["parity_max_rel_error"] < 1e-3
    assert result["eval_images"] == 4 and result["train_images"] == 16
    assert 0.0 <= result["fidelity_after_finetune"] <= 1.0
    assert result["settings"]["gates"]["steps"] == 16, "the run records what it ran"
    for path in ("onnx/original.onnx", "onnx/pruned.onnx", "outputs.png", "keep.json",
                 "finetune/metrics.jsonl", "gates/metrics.jsonl"):
        assert (workdir / path).exists(), path
    assert "| pruned + fine-tuned |" in (workdir / "result.md").read_text()
    assert result["settings"]["gates"]["multiple"] == 8
    if importlib.util.find_spec("tensorflow") is not None:   # the LiteRT timing ran
        for name in ("original", "pruned"):
            assert (workdir / f"tflite/{name}.tflite").exists()
        assert result["after"]["litert_parity_max_rel_error"] < 1e-3
        assert result["litert_speedup_batch1"] == pytest.approx(
            result["before"]["litert_batch1_median_ms"]
            / result["after"]["litert_batch1_median_ms"])
