"""Learned-gate channel pruning end to end: the project's showcase (default experiment).

teacher (cached) -> channel groups -> gates trained with distillation under a FLOPs or
latency budget -> hard threshold (counts rounded to a multiple) -> physical removal ->
distillation fine-tune -> ONNX export (parity-checked) -> latency on a device runner ->
a before/after table. Every stage writes to the workdir; gate training and the fine-tune
checkpoint and resume like any training run. The kept channels (keep.json) and the
fine-tuned variables (pruned_variables/) are saved so later stages (prune, then quantize
or factorize) rebuild the pruned model with ``load_pruned``.
"""
import json
import os
import time

import experiments
from core import checkpoint, cost, losses, train as train_lib
from experiments import preamble
from export.measure import export_and_compare
from pruning import find_groups, gates, keep_sets, prune


def _table(rows):
    header = ("| model | test acc | FLOPs (M) | params (k) | ORT b1 (ms) | ORT b32 (ms) |\n"
              "|---|---|---|---|---|---|\n")
    lines = [f"| {name} | {r['accuracy'] * 100:.2f} | {r['flops'] / 1e6:.2f} | "
             f"{r['params'] / 1e3:.1f} | {r['batch1_median_ms']:.3f} | "
             f"{r['batch32_median_ms']:.2f} |" for name, r in rows]
    return header + "\n".join(lines)


def load_pruned(config, workdir):
    """The fine-tuned pruned model of a finished run: ``(fn, variables, summary, dataset)``,
    rebuilt from the cached teacher and the saved keep sets (by group key, so they do not
    depend on the order the analysis finds groups in; older files by position still load)
    with the saved fine-tuned variables."""
    path = os.path.join(workdir, "keep.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} is missing: run the pruning experiment first "
            f"(python run.py --exp={config.get('experiment_name', 'prune_resnet20_2x')})")
    teacher = preamble.prepare(config.teacher, show_progress=False)
    keep = keep_sets.load(path)
    pruned = prune(teacher.fn, teacher.variables, teacher.example, keep=keep)
    tuned = checkpoint.load_pytree(os.path.join(workdir, "pruned_variables"), pruned.variables)
    with open(os.path.join(workdir, "result.json")) as f:
        result = json.load(f)
    summary = {"key": f"{config.get('experiment_name', 'pruned')}", "model":
               f"{config.teacher.model} pruned ({result['flops_reduction']:.2f}x fewer FLOPs)",
               "test_accuracy": result["accuracy_after_finetune"]}
    return pruned.fn, tuned, summary, teacher.dataset


def _latency_fn(config, teacher, settings):
    """The differentiable latency model for a latency budget (None for a FLOPs budget)."""
    if settings.target != "latency":
        return None
    from export import LatencyModel, LatencyTable, get_runner
    table = LatencyTable(get_runner(config.device), config.latency_table_path)
    latency_fn, _ = LatencyModel(table, mode="grid").differentiable(
        teacher.fn, teacher.variables, teacher.example)
    return latency_fn


def _learn_keep_sets(config, teacher, settings, workdir):
    """Gate training under the budget, then the hard threshold: (keep, trained variables,
    gate history, groups); the groups go on to ``prune`` so the model is analysed once."""
    fn, variables, x1 = teacher.fn, teacher.variables, teacher.example
    groups = find_groups(fn, variables, x1)
    prunable = [g for g in groups if g.prunable]
    print(f"{len(prunable)} prunable channel groups of {len(groups)}; "
          f"teacher test accuracy {teacher.summary['test_accuracy']:.4f}")
    cost_model, latency_fn = cost.cost_model(fn, variables, x1), _latency_fn(config, teacher,
                                                                             settings)
    trained, logits, history = gates.train_gates(
        fn, variables, groups, teacher.dataset, settings, workdir, cost_model,
        teacher.teacher_fn, latency_fn)
    ended_at = history[-1]["budget_relative"] if history else 1.0
    if ended_at > 1.05:
        print(f"warning: the gates ended at {ended_at:.2f}x their {settings.target} budget; "
              "more gates.steps or a larger gates.penalty would bring them to it")
    keep = gates.keep_from_logits(groups, logits, settings, cost_model, latency_fn)
    return keep, trained, history, groups


def _prune_and_finetune(config, teacher, settings, keep, trained, groups, workdir):
    """The pruned model, its accuracy right after pruning, and the distillation fine-tune.
    ``groups``: the analysis the gates were trained on (the trained variables only change
    values, not shapes, so it holds for them and ``prune`` need not trace the model again)."""
    pruned = prune(teacher.fn, trained, teacher.example, keep=keep, analysis=groups)
    after_prune = train_lib.evaluate(pruned.fn, pruned.variables, teacher.dataset, "test")
    print(f"test accuracy right after pruning: {after_prune['accuracy']:.4f}")
    tuned = train_lib.train(train_lib.frozen_model(pruned.fn, pruned.variables),
                            teacher.dataset, config.finetune,
                            os.path.join(workdir, "finetune"),
                            loss_fn=losses.distillation_from(
                                teacher.teacher_fn, settings.kd_temperature,
                                settings.kd_alpha))
    keep_sets.save(os.path.join(workdir, "keep.json"), pruned.groups, keep)
    checkpoint.save_pytree(os.path.join(workdir, "pruned_variables"), tuned["variables"])
    return pruned, after_prune, tuned


def _measure(config, teacher, pruned, tuned, workdir):
    """Teacher and pruned model exported by one exporter and timed in interleaved rounds
    (``export_and_compare``), so load on a shared machine falls on both alike and the
    speed-up is not the difference between two moments (issue 21, item 4)."""
    measured = export_and_compare(
        {"teacher": (teacher.fn, teacher.variables),
         "pruned": (pruned.fn, tuned["variables"])},
        teacher.example, os.path.join(workdir, "onnx"), config.device)
    before, after = measured["teacher"], measured["pruned"]
    before["accuracy"] = teacher.summary["test_accuracy"]
    after["accuracy"] = tuned["test"]["accuracy"]
    return before, after


def main(config, workdir):
    start = time.time()
    teacher = preamble.prepare(config.teacher)
    settings = experiments.gate_settings(config)
    keep, trained, history, groups = _learn_keep_sets(config, teacher, settings, workdir)
    pruned, after_prune, tuned = _prune_and_finetune(config, teacher, settings, keep, trained,
                                                     groups, workdir)
    before, after = _measure(config, teacher, pruned, tuned, workdir)
    summary = teacher.summary
    result = {
        "experiment": config.experiment_name, "teacher": summary["key"],
        "target": settings.target, "target_ratio": settings.target_ratio,
        "target_ms": settings.target_ms,
        "accuracy_before": summary["test_accuracy"],
        "accuracy_after_pruning": after_prune["accuracy"],
        "accuracy_after_finetune": tuned["test"]["accuracy"],
        "flops_reduction": before["flops"] / after["flops"],
        "params_reduction": before["params"] / after["params"],
        "speedup_batch1": before["batch1_median_ms"] / after["batch1_median_ms"],
        "speedup_batch32": before["batch32_median_ms"] / after["batch32_median_ms"],
        "before": before, "after": after,
        "kept_channels": {str(g): int(len(k)) for g, k in keep.items()},
        "removed_params": pruned.removed_params, "gate_history": history[-1:],
        "wall_seconds": time.time() - start,
        "settings": {"gates": {**config.gates.to_dict(), "multiple": settings.multiple},
                     "finetune": config.finetune.to_dict()},
    }
    table = _table([("teacher", before), ("pruned + fine-tuned", after)])
    text = (f"{table}\n\naccuracy right after pruning (before fine-tune): "
            f"{after_prune['accuracy'] * 100:.2f}%\nFLOPs reduction "
            f"{result['flops_reduction']:.2f}x, ONNX speed-up {result['speedup_batch1']:.2f}x "
            f"(batch 1), {result['speedup_batch32']:.2f}x (batch 32) on {config.device}")
    print(text)
    experiments.write_result(workdir, result, text)
    return result


def publish(config, result) -> None:
    """The result as ``benchmarks/results/<experiment>.json`` (the published table)."""
    experiments.publish_json(config, result)
