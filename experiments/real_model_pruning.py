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
(``FIDELITY``). The real models and how their inputs are made are in ``SOURCES``.
"""
import os
import time
from typing import Callable, Dict, NamedTuple, Tuple

import jax
import numpy as np

import experiments
from core import cost, losses, train as train_lib
from data import real_images
from data.unlabelled_images import UnlabelledImages
from export import machine
from export.measure import export_and_compare
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
def _learn_and_prune(config, model: RealModel, data, teacher_fn, workdir):
    groups = find_groups(model.fn, model.variables, model.example)
    prunable = [g for g in groups if g.prunable]
    print(f"{len(prunable)} prunable channel groups of {len(groups)}")
    settings = gates.GateSettings.from_config(config.gates)
    gate_task, _ = task_losses(config.fidelity)
    trained, logits, history = gates.train_gates(
        model.fn, model.variables, groups, data, settings, workdir,
        cost.cost_model(model.fn, model.variables, model.example), teacher_fn,
        task_loss=gate_task)
    keep = gates.threshold(groups, logits, settings)
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
    header = (f"| model | {kind} vs original | MFLOPs | params (k) | ORT 1 thread b1 (ms) |\n"
              "|---|---|---|---|---|\n")
    return header + "\n".join(
        f"| {name} | {r['fidelity']:.4f} | {r['flops'] / 1e6:.1f} | {r['params'] / 1e3:.1f} "
        f"| {r['batch1_median_ms']:.2f} |" for name, r in (("original", before),
                                                         ("pruned + fine-tuned", after)))


def main(config, workdir):
    start = time.time()
    model = load_model(config.model)
    h, w = model.size
    margin = config.data.crop_margin
    data = UnlabelledImages(real_images.load("calibration", size=(h + margin, w + margin),
                                             limit=config.data.train_images or None),
                            model.size, model.to_input, "real calibration images")
    held_out = real_images.load("evaluation", size=model.size,
                                limit=config.data.eval_images or None)
    eval_inputs = model.to_input(held_out)
    print(f"{config.model.source} model {config.model.name} at {h}x{w}; "
          f"{len(data)} training images, {len(held_out)} held-out images")
    teacher_fn = jax.jit(lambda x: model.fn(model.variables, x))
    reference = predict(with_head(model, model.fn), model.variables, eval_inputs)
    pruned, keep, history = _learn_and_prune(config, model, data, teacher_fn, workdir)
    after_prune = fidelity(config.fidelity, with_head(model, pruned.fn), pruned.variables,
                           eval_inputs, reference)
    print(f"{config.fidelity} right after pruning: {after_prune:.4f}")
    after_reconstruct = None
    if config.reconstruct.enabled:
        pruned = _reconstruct(config, model, pruned, data)
        after_reconstruct = fidelity(config.fidelity, with_head(model, pruned.fn),
                                     pruned.variables, eval_inputs, reference)
        print(f"{config.fidelity} after reconstruction: {after_reconstruct:.4f}")
    tuned = _finetune(config, pruned, data, teacher_fn, workdir)
    tuned_outputs = predict(with_head(model, pruned.fn), tuned["variables"], eval_inputs)
    # Parity is checked on a held-out real image, not on the zeros of model.example (a
    # sigmoid head gives ~1e-16 there and any comparison passes by accident); both models
    # are timed in interleaved rounds.
    measured = export_and_compare(
        {"original": (with_head(model, model.fn), model.variables),
         "pruned": (with_head(model, pruned.fn), tuned["variables"])},
        eval_inputs[:1], os.path.join(workdir, "onnx"), config.device, batches=(1,),
        rtol=config.get("export_rtol", 1e-4))
    measured["original"]["fidelity"] = 1.0
    measured["pruned"]["fidelity"] = FIDELITY[config.fidelity](tuned_outputs, reference)
    before, after = measured["original"], measured["pruned"]
    int8 = _int8(config, model, pruned.fn, tuned["variables"], data, eval_inputs, reference,
                 workdir) if config.int8.enabled else None
    result = {
        "experiment": config.experiment_name, "model": config.model.to_dict(),
        "resolution": [h, w], "fidelity_metric": config.fidelity,
        "train_images": len(data), "eval_images": len(held_out),
        "fidelity_after_pruning": after_prune, "fidelity_after_reconstruction":
            after_reconstruct, "fidelity_after_finetune": after["fidelity"],
        "flops_reduction": before["flops"] / after["flops"],
        "params_reduction": before["params"] / after["params"],
        "speedup_batch1": before["batch1_median_ms"] / after["batch1_median_ms"],
        "before": before, "after": after,
        "kept_channels": {str(g): int(len(k)) for g, k in keep.items()},
        "gate_history": history[-1:], "wall_seconds": time.time() - start,
        "machine": machine.describe(),
        "settings": {"gates": config.gates.to_dict(), "finetune": config.finetune.to_dict(),
                     "reconstruct": config.reconstruct.to_dict()},
    }
    result["speedup_over_flops_reduction"] = (result["speedup_batch1"]
                                              / result["flops_reduction"])
    if int8 is not None:
        result["int8"] = int8
    if config.fidelity == "mask_iou":
        ious = per_image_iou(tuned_outputs, reference)
        shown = shown_image(ious, reference)
        save_comparison_png(os.path.join(workdir, "outputs.png"), held_out[shown],
                            reference[shown], tuned_outputs[shown],
                            f"{config.model.name}: held-out image {shown}, IoU {ious[shown]:.3f}"
                            f" (median of the held-out images where the original's map covers 5%"
                            f" or more), {result['flops_reduction']:.2f}x fewer FLOPs")
    text = (f"{_table(before, after, config.fidelity)}\n\n{config.fidelity} right after "
            f"pruning: {after_prune:.4f}"
            + (f", after reconstruction: {after_reconstruct:.4f}"
               if after_reconstruct is not None else "")
            + f" (before fine-tune)\nFLOPs reduction "
            f"{result['flops_reduction']:.2f}x, ONNX speed-up {result['speedup_batch1']:.2f}x "
            f"(batch 1, {config.device}), in {result['wall_seconds'] / 60:.1f} min\n"
            f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
            f"load {result['machine']['load_average_at_start']}")
    if int8 is not None:
        from experiments.real_model_int8 import table as int8_table
        text += f"\n\nint8 of the pruned model (choices on validation images):\n{int8_table(int8)}"
    print(text)
    experiments.write_result(workdir, result, text)
    return result


def publish(config, result) -> None:
    """The result as ``benchmarks/results/<experiment>.json`` (the published table)."""
    experiments.publish_json(config, result)
