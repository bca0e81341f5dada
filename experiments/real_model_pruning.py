"""A real pretrained model compressed on real images: the project's default showcase.

original model (imported from .tflite / .onnx, never trained here) -> channel groups ->
learned gates trained by distillation from the original on augmented real images (no
labels) under a FLOPs budget -> hard threshold -> physical removal -> distillation
fine-tune -> ONNX export (parity-checked) -> one-thread onnxruntime latency -> fidelity
against the original on held-out real images -> a before/after table and a PNG of both
models' outputs on a held-out image. Every training stage checkpoints in the workdir, so a
killed run resumes.

Fidelity is measured against the original model, never against labels (there are none):
mask IoU for a probability map (segmentation, text maps), top-1 agreement for a classifier
(``FIDELITY``); a config's ``extra_fidelity`` names measures recorded beside it after every
stage (``EXTRA_MEASURES``: box F1 of a text detector's boxes after PaddleOCR's DB
post-processing, ``experiments.text_boxes``). The real models and how their inputs are made
are in ``SOURCES``.
"""
import os
import time
from typing import Callable, Dict, NamedTuple, Tuple

import jax
import numpy as np

import experiments
from experiments import text_boxes
from core import cost, losses, train as train_lib
from data import real_images, text_overlay
from data.unlabelled_images import UnlabelledImages
from export import machine
from export.measure import export_and_compare, export_tflite_and_compare
from pruning import find_groups, gates, keep_sets, prune
from pruning.reconstruct import reconstruct


class RealModel(NamedTuple):
    fn: Callable                    # fn({'params': weights}, x): the trained output (logits)
    variables: Dict                 # {'params': the original weights}
    example: np.ndarray             # one input at the native resolution
    size: Tuple[int, int]           # input height and width
    to_input: Callable              # uint8 RGB NHWC images -> model inputs
    head: Callable                  # trained output -> the model's output (e.g. sigmoid)


# The model's final activation, computed outside the trained and pruned function: a dense
# map is distilled on its logits (core.losses.logit_map_distillation says why).
HEADS = {"sigmoid": jax.nn.sigmoid, "none": lambda outputs: outputs}


def _as_params(fn, weights, example, size, to_input, head) -> RealModel:
    """Imported weights as the 'params' collection the training loop trains."""
    return RealModel(lambda v, x: fn(v["params"], x), {"params": weights}, example,
                     size, to_input, HEADS[head])


def _tflite(config) -> RealModel:
    import models
    from models import real_tflite_models
    fn, weights, example = models.from_tflite(str(real_tflite_models.path(config.name)),
                                              config.outputs or None)
    size = real_tflite_models.MODELS[config.name].input_hw
    return _as_params(fn, weights, example, size,
                      lambda images: np.asarray(images, np.float32) / np.float32(255.0),
                      config.head)


def _onnx(config) -> RealModel:
    from models import real_models
    native = real_models.models()[config.name].input_shape
    # config.size: another input resolution for a fully convolutional model (the detector
    # takes any multiple of 32); empty: the native one.
    size = tuple(config.get("size") or native[2:])
    fn, weights, example = real_models.load(config.name, tuple(native[:2]) + size,
                                            outputs=config.outputs or None)
    return _as_params(fn, weights, example, size,
                      lambda images: real_models.preprocess(config.name, images), config.head)


SOURCES: Dict[str, Callable[..., RealModel]] = {"tflite": _tflite, "onnx": _onnx}


def load_model(config) -> RealModel:
    """``config``: source, name, outputs (the tensor to train on, e.g. the logits before
    the final sigmoid; empty: the model's output) and head (``HEADS``)."""
    if config.source not in SOURCES:
        raise ValueError(f"model.source {config.source!r}: choose one of {sorted(SOURCES)}")
    if config.head not in HEADS:
        raise ValueError(f"model.head {config.head!r}: choose one of {sorted(HEADS)}")
    return SOURCES[config.source](config)


def with_head(model: RealModel, fn: Callable) -> Callable:
    """The deployable function: ``fn``'s trained output through the model's head."""
    return lambda variables, x: model.head(fn(variables, x))


# ------------------------------------------------------------ fidelity to the original
def per_image_iou(outputs, reference, threshold: float = 0.5) -> np.ndarray:
    """Per image: IoU of the thresholded probability maps (nan where both are empty)."""
    a = np.asarray(outputs).reshape(len(outputs), -1) > threshold
    b = np.asarray(reference).reshape(len(reference), -1) > threshold
    union = (a | b).sum(1)
    return np.where(union > 0, (a & b).sum(1) / np.maximum(union, 1), np.nan)


def mask_iou(outputs, reference, threshold: float = 0.5) -> float:
    """IoU of the thresholded maps over all pixels of all images (the usual segmentation
    IoU: a per-image mean would count an image without foreground as 0 for one stray
    pixel, and 60% of the held-out images hold no person)."""
    a, b = np.asarray(outputs) > threshold, np.asarray(reference) > threshold
    return float((a & b).sum() / max((a | b).sum(), 1))


def top1_agreement(outputs, reference) -> float:
    return float(np.mean(np.argmax(outputs, -1) == np.argmax(reference, -1)))


FIDELITY = {"mask_iou": mask_iou, "top1_agreement": top1_agreement}

# Measures recorded beside the fidelity when ``config.extra_fidelity`` names them: each maps
# (outputs, reference) to a dict of figures. box_f1: the DB post-processing's text boxes of
# a text detector's maps, matched against the original's (experiments/text_boxes.py).
EXTRA_MEASURES = {"box_f1": text_boxes.box_f1_of_maps}


def check_extra_measures(config) -> None:
    """Unknown names in ``config.extra_fidelity`` fail before any training."""
    unknown = sorted(set(config.get("extra_fidelity", ())) - set(EXTRA_MEASURES))
    if unknown:
        raise ValueError(f"extra_fidelity {unknown}: choose from {sorted(EXTRA_MEASURES)}")


def extra_measures(config, outputs, reference) -> Dict:
    """The figures of every measure in ``config.extra_fidelity`` (empty: none)."""
    figures = {}
    for name in config.get("extra_fidelity", ()):
        figures.update(EXTRA_MEASURES[name](outputs, reference))
    return figures


def extra_measures_table(per_stage: Dict[str, Dict]) -> str:
    """Markdown: one row per stage, one column per figure of the extra measures."""
    names = list(next(iter(per_stage.values())))
    rows = [f"| {stage.replace('_', ' ')} | " + " | ".join(
        f"{v:.4f}" if isinstance(v, float) else str(v) for v in figures.values()) + " |"
        for stage, figures in per_stage.items()]
    return ("| vs original | " + " | ".join(n.replace("_", " ") for n in names) + " |\n|---|"
            + "---|" * len(names) + "\n" + "\n".join(rows))


def task_losses(kind: str):
    """(gate task loss, fine-tune loss builder) distilling the original's outputs."""
    if kind == "mask_iou":
        return (lambda student, teacher, labels:
                losses.logit_map_distillation(student, teacher),
                losses.dense_distillation_from)
    return (lambda student, teacher, labels: (losses.kd_logits_loss(student, teacher), {}),
            lambda teacher_fn: lambda out, labels, x: losses.kd_logits_loss(
                out, jax.lax.stop_gradient(teacher_fn(x))))


def predict(fn, variables, inputs, batch_size: int = 16) -> np.ndarray:
    run = jax.jit(fn)
    return np.concatenate([np.asarray(run(variables, inputs[i:i + batch_size]))
                           for i in range(0, len(inputs), batch_size)])


def fidelity(kind: str, fn, variables, inputs, reference) -> float:
    return FIDELITY[kind](predict(fn, variables, inputs), reference)


# ------------------------------------------------------------ stages
def _learn_and_prune(config, settings, model: RealModel, data, teacher_fn, workdir):
    groups = find_groups(model.fn, model.variables, model.example)
    prunable = [g for g in groups if g.prunable]
    print(f"{len(prunable)} prunable channel groups of {len(groups)}")
    gate_task, _ = task_losses(config.fidelity)
    cost_model = cost.cost_model(model.fn, model.variables, model.example)
    trained, logits, history = gates.train_gates(
        model.fn, model.variables, groups, data, settings, workdir, cost_model, teacher_fn,
        task_loss=gate_task)
    keep = gates.keep_from_logits(groups, logits, settings, cost_model)
    keep_sets.save(os.path.join(workdir, "keep.json"), groups, keep)
    return prune(model.fn, trained, model.example, keep=keep, analysis=groups), keep, history


def _reconstruct(config, model: RealModel, pruned, data):
    """``pruning.reconstruct`` of the pruned model's layers against the original's, on
    central crops of training images (never the held-out ones)."""
    n, batch = config.reconstruct.images, config.reconstruct.batch_size
    crops = model.to_input(data.crops(None, np.arange(min(n, len(data))), augment=False))
    rebuilt, fits = reconstruct(model.fn, model.variables, pruned,
                                [crops[i:i + batch] for i in range(0, len(crops), batch)],
                                ridge=config.reconstruct.ridge)
    worst = sorted(fits, key=lambda f: -f.error_before)[:3]
    print(f"reconstructed {len(fits)} layers on {len(crops)} images; largest errors "
          + ", ".join(f"{f.path} {f.error_before:.3f}->{f.error_after:.3f}" for f in worst))
    return rebuilt


def _finetune(config, pruned, data, teacher_fn, workdir):
    _, finetune_loss = task_losses(config.fidelity)
    return train_lib.train(train_lib.frozen_model(pruned.fn, pruned.variables), data,
                           config.finetune, os.path.join(workdir, "finetune"),
                           loss_fn=finetune_loss(teacher_fn), evaluate_splits=(),
                           description="fine-tune")


def _int8(config, model: RealModel, fn, variables, data, eval_inputs, reference, workdir):
    """Ours and onnxruntime's quantize_static int8 of the pruned model
    (``experiments.real_model_int8``), calibrated on central crops of training images and
    chosen on others (validation), judged on the held-out images against the original."""
    from experiments.real_model_int8 import int8_stage
    n_cal, n_val = config.int8.calibration_images, config.int8.validation_images
    if n_cal + n_val > len(data):
        raise ValueError(f"int8: {n_cal} calibration + {n_val} validation images, but only "
                         f"{len(data)} training images")
    crops = model.to_input(data.crops(None, np.arange(n_cal + n_val), augment=False))
    return int8_stage(with_head(model, fn), variables, crops[:n_cal], crops[n_cal:],
                      eval_inputs, reference, FIDELITY[config.fidelity],
                      os.path.join(workdir, "int8"), config.device)


def shown_image(ious, reference, min_foreground: float = 0.05) -> int:
    """The held-out image to picture: the median IoU among those where the original's map
    covers at least ``min_foreground`` of the pixels (the lowest IoU is usually an image
    where the original finds a few stray pixels and says nothing about the model)."""
    covered = np.asarray(reference).reshape(len(reference), -1).__gt__(0.5).mean(1)
    candidates = np.flatnonzero((covered >= min_foreground) & np.isfinite(ious))
    if not len(candidates):
        candidates = np.flatnonzero(np.isfinite(ious)) if np.isfinite(ious).any() else [0]
    order = sorted(candidates, key=lambda i: ious[i])
    return int(order[len(order) // 2])


def save_comparison_png(path, image, original, compressed, title: str) -> None:
    """The held-out image beside the original's and the compressed model's maps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    for ax, (name, shown) in zip(axes, (("input", image), ("original", original),
                                        ("compressed", compressed))):
        ax.imshow(np.squeeze(shown), cmap=None if name == "input" else "magma",
                  vmin=None if name == "input" else 0.0, vmax=None if name == "input" else 1.0)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(before, after, kind):
    litert = "litert_batch1_median_ms" in before
    header = (f"| model | {kind} vs original | MFLOPs | params (k) | ORT 1 thread b1 (ms) |"
              + (" LiteRT 1 thread b1 (ms) |" if litert else "") + "\n"
              + "|---" * (6 if litert else 5) + "|\n")
    return header + "\n".join(
        f"| {name} | {r['fidelity']:.4f} | {r['flops'] / 1e6:.1f} | {r['params'] / 1e3:.1f} "
        f"| {r['batch1_median_ms']:.2f} |"
        + (f" {r['litert_batch1_median_ms']:.2f} |" if litert else "")
        for name, r in (("original", before), ("pruned + fine-tuned", after)))


class HeldOut(NamedTuple):
    images: np.ndarray              # uint8 RGB at the model's resolution
    inputs: np.ndarray              # the model's inputs made from them
    reference: np.ndarray           # the original model's (headed) outputs on them


def _load_images(config, model: RealModel):
    """Training images (stored at a margin for random crops) and the held-out images with
    the original model's outputs on them."""
    h, w = model.size
    margin = config.data.crop_margin
    text = config.data.get("text_overlay", 0.0)
    overlay = (None if not text else
               lambda crops, rng: text_overlay.overlay_batch(crops, rng, probability=text))
    data = UnlabelledImages(real_images.load("calibration", size=(h + margin, w + margin),
                                             limit=config.data.train_images or None),
                            model.size, model.to_input, "real calibration images", overlay)
    images = real_images.load("evaluation", size=model.size,
                              limit=config.data.eval_images or None)
    inputs = model.to_input(images)
    print(f"{config.model.source} model {config.model.name} at {h}x{w}; "
          f"{len(data)} training images, {len(images)} held-out images")
    reference = predict(with_head(model, model.fn), model.variables, inputs)
    return data, HeldOut(images, inputs, reference)


def _score_stage(config, model: RealModel, name: str, fn, variables, held_out: HeldOut,
                 scores: Dict) -> np.ndarray:
    """The config's fidelity of one stage on the held-out images into ``scores[name]``
    (and its extra measures into ``scores['extra'][name]``); returns the outputs."""
    outputs = predict(with_head(model, fn), variables, held_out.inputs)
    scores[name] = FIDELITY[config.fidelity](outputs, held_out.reference)
    extra = extra_measures(config, outputs, held_out.reference)
    if extra:
        scores.setdefault("extra", {})[name] = extra
    print(f"{config.fidelity} {name.replace('_', ' ')}: {scores[name]:.4f}"
          + "".join(f", {k} {v:.4f}" for k, v in extra.items() if isinstance(v, float)))
    return outputs


def _prune_and_score(config, settings, model: RealModel, data, held_out: HeldOut,
                     teacher_fn, workdir):
    """Gates, pruning, optional reconstruction and fine-tune, each stage scored."""
    scores = {"after_reconstruction": None}
    pruned, keep, history = _learn_and_prune(config, settings, model, data, teacher_fn,
                                             workdir)
    _score_stage(config, model, "after_pruning", pruned.fn, pruned.variables, held_out, scores)
    if config.reconstruct.enabled:
        pruned = _reconstruct(config, model, pruned, data)
        _score_stage(config, model, "after_reconstruction", pruned.fn, pruned.variables,
                     held_out, scores)
    tuned = _finetune(config, pruned, data, teacher_fn, workdir)
    tuned_outputs = _score_stage(config, model, "after_finetune", pruned.fn,
                                 tuned["variables"], held_out, scores)
    return pruned, tuned, tuned_outputs, keep, history, scores


def _export_and_time(config, model: RealModel, pruned, tuned, held_out: HeldOut, scores,
                     workdir):
    """ONNX of both models, parity-checked on a held-out real image, not on the zeros of
    model.example (a sigmoid head gives ~1e-16 there and any comparison passes by
    accident); both are timed in interleaved rounds."""
    measured = export_and_compare(
        {"original": (with_head(model, model.fn), model.variables),
         "pruned": (with_head(model, pruned.fn), tuned["variables"])},
        held_out.inputs[:1], os.path.join(workdir, "onnx"), config.device, batches=(1,),
        rtol=config.get("export_rtol", 1e-4))
    measured["original"]["fidelity"] = 1.0
    measured["pruned"]["fidelity"] = scores["after_finetune"]
    if config.get("litert_device"):
        _time_on_litert(config, model, pruned, tuned, held_out, measured, workdir)
    return measured["original"], measured["pruned"]


def _time_on_litert(config, model: RealModel, pruned, tuned, held_out: HeldOut, measured,
                    workdir) -> None:
    """Both models as .tflite on ``config.litert_device``, interleaved: ``litert_*`` fields
    in ``measured``. Skipped with a message where TensorFlow (the converter) is missing."""
    try:
        timed = export_tflite_and_compare(
            {"original": (with_head(model, model.fn), model.variables),
             "pruned": (with_head(model, pruned.fn), tuned["variables"])},
            held_out.inputs[:1], os.path.join(workdir, "tflite"), config.litert_device)
    except ImportError as error:
        print(f"[{config.experiment_name}] no LiteRT timing: {error}")
        return
    for name, fields in timed.items():
        measured[name].update({f"litert_{k}": v for k, v in fields.items()
                               if k != "op_counts"})


def _result(config, settings, model, data, held_out, before, after, keep, history, scores,
            start):
    h, w = model.size
    result = {
        "experiment": config.experiment_name, "model": config.model.to_dict(),
        "resolution": [h, w], "fidelity_metric": config.fidelity,
        "train_images": len(data), "eval_images": len(held_out.images),
        "fidelity_after_pruning": scores["after_pruning"], "fidelity_after_reconstruction":
            scores["after_reconstruction"], "fidelity_after_finetune": after["fidelity"],
        "flops_reduction": before["flops"] / after["flops"],
        "params_reduction": before["params"] / after["params"],
        "speedup_batch1": before["batch1_median_ms"] / after["batch1_median_ms"],
        "before": before, "after": after,
        "kept_channels": {str(g): int(len(k)) for g, k in keep.items()},
        "gate_history": history[-1:], "wall_seconds": time.time() - start,
        "machine": machine.describe(),
        "settings": {"gates": {**config.gates.to_dict(), "multiple": settings.multiple},
                     "finetune": config.finetune.to_dict(),
                     "reconstruct": config.reconstruct.to_dict()},
    }
    result["speedup_over_flops_reduction"] = (result["speedup_batch1"]
                                              / result["flops_reduction"])
    if "litert_batch1_median_ms" in before:
        result["litert_speedup_batch1"] = (before["litert_batch1_median_ms"]
                                           / after["litert_batch1_median_ms"])
    if "extra" in scores:
        result["extra_fidelity"] = scores["extra"]
    return result


def _save_png(config, workdir, held_out: HeldOut, tuned_outputs, flops_reduction) -> None:
    ious = per_image_iou(tuned_outputs, held_out.reference)
    shown = shown_image(ious, held_out.reference)
    save_comparison_png(os.path.join(workdir, "outputs.png"), held_out.images[shown],
                        held_out.reference[shown], tuned_outputs[shown],
                        f"{config.model.name}: held-out image {shown}, IoU {ious[shown]:.3f}"
                        f" (median of the held-out images where the original's map covers 5%"
                        f" or more), {flops_reduction:.2f}x fewer FLOPs")


def _report(config, result, before, after, int8) -> str:
    after_prune, after_reconstruct = (result["fidelity_after_pruning"],
                                      result["fidelity_after_reconstruction"])
    text = (f"{_table(before, after, config.fidelity)}\n\n{config.fidelity} right after "
            f"pruning: {after_prune:.4f}"
            + (f", after reconstruction: {after_reconstruct:.4f}"
               if after_reconstruct is not None else "")
            + f" (before fine-tune)\nFLOPs reduction "
            f"{result['flops_reduction']:.2f}x, ONNX speed-up {result['speedup_batch1']:.2f}x "
            f"(batch 1, {config.device})"
            + (f", LiteRT speed-up {result['litert_speedup_batch1']:.2f}x "
               f"({config.litert_device})" if "litert_speedup_batch1" in result else "")
            + f", in {result['wall_seconds'] / 60:.1f} min\n"
            f"machine: {machine.line(result['machine'])}")
    if "extra_fidelity" in result:
        text += "\n\n" + extra_measures_table(result["extra_fidelity"])
    if int8 is not None:
        from experiments.real_model_int8 import table as int8_table
        text += f"\n\nint8 of the pruned model (choices on validation images):\n{int8_table(int8)}"
    return text


def main(config, workdir):
    start = time.time()
    check_extra_measures(config)
    model = load_model(config.model)
    data, held_out = _load_images(config, model)
    teacher_fn = jax.jit(lambda x: model.fn(model.variables, x))
    settings = experiments.gate_settings(config)
    pruned, tuned, tuned_outputs, keep, history, scores = _prune_and_score(
        config, settings, model, data, held_out, teacher_fn, workdir)
    before, after = _export_and_time(config, model, pruned, tuned, held_out, scores, workdir)
    int8 = _int8(config, model, pruned.fn, tuned["variables"], data, held_out.inputs,
                 held_out.reference, workdir) if config.int8.enabled else None
    result = _result(config, settings, model, data, held_out, before, after, keep, history,
                     scores, start)
    if int8 is not None:
        result["int8"] = int8
    if config.fidelity == "mask_iou":
        _save_png(config, workdir, held_out, tuned_outputs, result["flops_reduction"])
    text = _report(config, result, before, after, int8)
    print(text)
    experiments.write_result(workdir, result, text)
    return result


def publish(config, result) -> None:
    """The result as ``benchmarks/results/<experiment>.json`` (the published table)."""
    experiments.publish_json(config, result)
