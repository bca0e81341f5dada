"""Short fine-tunes of some sampled architectures: does the predictors' target rank
architectures the way training them would?

Why: DONNA predicts fine-tuned accuracy, because that is what a user gets; the search here
predicts accuracy measured without training (as assembled, or with the students' BatchNorm
statistics recalibrated: ``nas.predictor_fitting.held_out_accuracies``), which hundreds of
architectures can afford. Whether that proxy is good enough is measured, not assumed: a few
sampled architectures are recalibrated and fine-tuned briefly by the comparison's own recipe
(``nas.finetune``, one learning rate, ``steps`` steps, resumable), and ``agreement`` reports
the Kendall tau of each untrained target against their fine-tuned validation accuracy, and
of the search's accuracy predictor, fitted on the other sampled architectures, against it.
"""
import copy
import os
from typing import Callable, Dict, List, Sequence

import numpy as np
from scipy import stats

from nas import assembled_training, finetune
from nas.search_space import Architecture


def short_config(finetune_cfg, steps: int, learning_rate: float):
    """The recipe at one learning rate for ``steps`` steps (warm-up scaled down with it)."""
    cfg = copy.deepcopy(finetune_cfg)
    cfg.steps, cfg.learning_rates = int(steps), [float(learning_rate)]
    cfg.warmup_steps = min(cfg.get("warmup_steps", 0), int(steps) // 10)
    cfg.checkpoint_every = max(1, int(steps) // 2)
    return cfg


def short_finetunes(library, archs: Sequence[Architecture], teacher_fn, teacher_variables,
                    dataset, finetune_cfg, steps: int, learning_rate: float, workdir: str,
                    log=print) -> List[Dict]:
    """Each architecture recalibrated and fine-tuned by ``short_config``: its validation
    accuracy after the fine-tune (the target the proxies are judged against)."""
    cfg = short_config(finetune_cfg, steps, learning_rate)
    rows = []
    for k, arch in enumerate(archs):
        model = assembled_training.trainable(library, tuple(arch))
        model = assembled_training.with_variables(model, assembled_training.recalibrate(
            model, dataset, cfg.get("recalibration_batches", 50), cfg.batch_size))
        tuned = finetune.finetune(model, teacher_fn, teacher_variables, dataset, cfg,
                                  os.path.join(workdir, "-".join(map(str, arch))))
        rows.append({"arch": list(arch), "steps": int(steps),
                     "finetuned_accuracy": tuned["validation_accuracy"]})
        log(f"short fine-tune {k + 1}/{len(archs)}: validation accuracy "
            f"{tuned['validation_accuracy']:.4f}")
    return rows


def _tau(a, b) -> float:
    tau = stats.kendalltau(a, b)[0]
    return float(tau) if np.isfinite(tau) else float("nan")


def agreement(rows: Sequence[Dict], finetuned: Sequence[Dict],
              predictor_factory: Callable) -> Dict:
    """Kendall tau against the fine-tuned accuracy of the fine-tuned architectures: of each
    untrained target the rows hold (``assembled_accuracy``, ``recalibrated_accuracy``) and
    of the accuracy predictor fitted on every other row's ``accuracy``."""
    tuned = {tuple(r["arch"]): r["finetuned_accuracy"] for r in finetuned}
    inside = [r for r in rows if tuple(r["arch"]) in tuned]
    target = [tuned[tuple(r["arch"])] for r in inside]
    out = {"architectures": len(inside), "steps": finetuned[0]["steps"] if finetuned else 0,
           "finetuned_accuracy": target}
    for key in ("assembled_accuracy", "recalibrated_accuracy"):
        if inside and all(key in r for r in inside):
            out[f"tau_{key}"] = _tau([r[key] for r in inside], target)
    others = [r for r in rows if tuple(r["arch"]) not in tuned]
    if inside and len(others) >= 3:
        model = predictor_factory().fit([tuple(r["arch"]) for r in others],
                                        np.array([r["accuracy"] for r in others]))
        out["tau_predictor"] = _tau(model.predict([tuple(r["arch"]) for r in inside]), target)
    return out


__all__ = ["short_config", "short_finetunes", "agreement"]
