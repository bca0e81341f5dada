"""One fine-tune recipe for every model of the NAS comparison, and the claim check.

A comparison between searched architectures and baselines (width-scaled teachers,
channel-pruned models) is only fair when every model gets the same end-to-end training:
the same optimizer, schedule, steps, batches, knowledge distillation from the teacher and
BatchNorm trained. ``finetune`` is that recipe, for any ``core.train.TrainableModel``: the
config's ``learning_rates`` are each tried for the same steps and the one with the best
validation accuracy is kept (test accuracy is only reported).

The claim check asks DONNA's question, whether an assembled network is already as good as
it gets: the chosen architecture's test accuracy as assembled, after its students'
BatchNorm statistics are recalibrated on its own activations (``nas.assembled_training``,
no training), and after ``finetune``.
"""
import functools
import os
from typing import Dict

import ml_collections

from core import losses, train as train_lib
from nas import assembled_training
from quant.comparison import choose_best


def train_config(cfg, learning_rate: float) -> ml_collections.ConfigDict:
    """The ``core.train`` section of the recipe at one learning rate."""
    return ml_collections.ConfigDict(dict(
        seed=cfg.get("seed", 0), batch_size=cfg.batch_size, epochs=0.0, steps=cfg.steps,
        optimizer=cfg.get("optimizer", "sgd"), learning_rate=float(learning_rate),
        momentum=cfg.get("momentum", 0.9), nesterov=cfg.get("nesterov", True),
        weight_decay=cfg.get("weight_decay", 0.0), warmup_steps=cfg.get("warmup_steps", 0),
        label_smoothing=0.0, ema_decay=0.0, augment=cfg.get("augment", True),
        log_every=cfg.get("log_every", 50), eval_every_epochs=0,
        checkpoint_every=cfg.get("checkpoint_every", 200)))


def learning_rates(cfg):
    return [float(v) for v in (cfg.get("learning_rates") or (cfg.learning_rate,))]


def finetune(model: train_lib.TrainableModel, teacher_fn, teacher_variables, dataset, cfg,
             workdir: str, show_progress: bool = False) -> Dict:
    """``model`` trained by the recipe at every learning rate of the config (each resumable
    in ``workdir/lr<value>``); the one best on validation. Returns its 'learning_rate',
    'validation_accuracy', 'test_accuracy', 'variables' and the 'grid' of validation
    accuracies."""
    loss_fn = losses.distillation_from(functools.partial(teacher_fn, teacher_variables),
                                       cfg.get("temperature", 4.0), cfg.get("alpha", 0.9))
    runs = {}
    for lr in learning_rates(cfg):
        runs[f"{lr:g}"] = train_lib.train(model, dataset, train_config(cfg, lr),
                                          os.path.join(workdir, f"lr{lr:g}"), loss_fn,
                                          show_progress=show_progress)
    grid = {lr: float(r["validation"]["accuracy"]) for lr, r in runs.items()}
    best = choose_best(grid)
    return {"learning_rate": float(best), "validation_accuracy": grid[best],
            "test_accuracy": float(runs[best]["test"]["accuracy"]),
            "variables": runs[best]["variables"], "grid": grid, "steps": int(cfg.steps)}


def claim_check(library, arch, teacher_fn, teacher_variables, dataset, cfg, workdir) -> dict:
    """Test accuracy of ``arch`` as assembled, recalibrated and fine-tuned by the recipe."""
    model = assembled_training.trainable(library, tuple(arch))
    accuracy = lambda variables: float(train_lib.evaluate(model.apply_eval, variables,
                                                          dataset, "test")["accuracy"])
    assembled = accuracy(model.variables)
    recalibrated_variables = assembled_training.recalibrate(
        model, dataset, cfg.get("recalibration_batches", 50), cfg.batch_size)
    recalibrated = accuracy(recalibrated_variables)
    tuned = finetune(assembled_training.with_variables(model, recalibrated_variables),
                     teacher_fn, teacher_variables, dataset, cfg, workdir,
                     cfg.get("show_progress", False))
    return {"arch": list(arch), "steps": int(cfg.steps), "learning_rate": tuned["learning_rate"],
            "learning_rate_grid": tuned["grid"], "assembled_test_accuracy": assembled,
            "recalibrated_test_accuracy": recalibrated,
            "finetuned_test_accuracy": tuned["test_accuracy"],
            "gain": tuned["test_accuracy"] - assembled}


__all__ = ["finetune", "claim_check", "train_config", "learning_rates"]
