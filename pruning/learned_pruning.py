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

import jax
import numpy as np

from core import checkpoint, config as config_lib, cost, losses
from core import teacher as teacher_lib, train as train_lib
from export.measure import export_and_measure
from pruning import find_groups, gates, prune


def _table(rows):
    header = ("| model | test acc | FLOPs (M) | params (k) | ORT b1 (ms) | ORT b32 (ms) |\n"
              "|---|---|---|---|---|---|\n")
    lines = [f"| {name} | {r['accuracy'] * 100:.2f} | {r['flops'] / 1e6:.2f} | "
             f"{r['params'] / 1e3:.1f} | {r['batch1_median_ms']:.3f} | "
             f"{r['batch32_median_ms']:.2f} |" for name, r in rows]
    return header + "\n".join(lines)


def load_pruned(config, workdir):
    """The fine-tuned pruned model of a finished run: ``(fn, variables, summary, dataset)``,
    rebuilt from the cached teacher and the saved keep sets (channel groups are found
    deterministically, so group ids match) with the saved fine-tuned variables."""
    path = os.path.join(workdir, "keep.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} is missing: run the pruning experiment first "
            f"(python run.py --exp={config.get('experiment_name', 'prune_resnet20_2x')})")
    module, variables, summary = teacher_lib.get_teacher(config.teacher, show_progress=False)
    dataset = teacher_lib.load_data(config.teacher)
    fn = lambda v, x: module.apply(v, x, train=False)  # noqa: E731
    x1 = np.asarray(train_lib.pipeline.normalize(dataset.test[0][:1], dataset.mean,
                                                 dataset.std))
    with open(path) as f:
        keep = {int(g): np.asarray(k, np.int32) for g, k in json.load(f).items()}
    pruned = prune(fn, variables, x1, keep=keep)
    tuned = checkpoint.load_pytree(os.path.join(workdir, "pruned_variables"), pruned.variables)
    with open(os.path.join(workdir, "result.json")) as f:
        result = json.load(f)
    summary = {"key": f"{config.get('experiment_name', 'pruned')}", "model":
               f"{config.teacher.model} pruned ({result['flops_reduction']:.2f}x fewer FLOPs)",
               "test_accuracy": result["accuracy_after_finetune"]}
    return pruned.fn, tuned, summary, dataset


def main(config, workdir):
    start = time.time()
    module, variables, summary = teacher_lib.get_teacher(config.teacher)
    dataset = teacher_lib.load_data(config.teacher)
    fn = lambda v, x: module.apply(v, x, train=False)  # noqa: E731
    x1 = np.asarray(train_lib.pipeline.normalize(dataset.test[0][:1], dataset.mean,
                                                 dataset.std))
    teacher_fn = jax.jit(lambda x: fn(variables, x))
    settings = gates.GateSettings.from_config(config.gates)

    groups = find_groups(fn, variables, x1)
    prunable = [g for g in groups if g.prunable]
    cost_model = cost.cost_model(fn, variables, x1)
    latency_fn = None
    if settings.target == "latency":
        from export import LatencyModel, LatencyTable, get_runner
        table = LatencyTable(get_runner(config.device), config.latency_table_path)
        latency_fn, _ = LatencyModel(table, mode="grid").differentiable(fn, variables, x1)
    print(f"{len(prunable)} prunable channel groups of {len(groups)}; "
          f"teacher test accuracy {summary['test_accuracy']:.4f}")

    trained, logits, history = gates.train_gates(
        fn, variables, groups, dataset, settings, workdir, cost_model, teacher_fn, latency_fn)
    ended_at = history[-1]["budget_relative"] if history else 1.0
    if ended_at > 1.05:
        print(f"warning: the gates ended at {ended_at:.2f}x their {settings.target} budget; "
              "more gates.steps or a larger gates.penalty would bring them to it")
    keep = gates.threshold(groups, logits, settings)
    pruned = prune(fn, trained, x1, keep=keep)
    sizes = {str(g): int(len(k)) for g, k in keep.items()}
    after_prune = train_lib.evaluate(pruned.fn, pruned.variables, dataset, "test")
    print(f"test accuracy right after pruning: {after_prune['accuracy']:.4f}")

    model = train_lib.TrainableModel(pruned.variables,
                                     lambda v, x, rng: (pruned.fn(v, x), {}), pruned.fn)
    tuned = train_lib.train(model, dataset, config.finetune,
                            os.path.join(workdir, "finetune"),
                            loss_fn=losses.distillation_from(
                                teacher_fn, settings.kd_temperature, settings.kd_alpha))

    with open(os.path.join(workdir, "keep.json"), "w") as f:
        json.dump({str(g): [int(i) for i in k] for g, k in keep.items()}, f)
    checkpoint.save_pytree(os.path.join(workdir, "pruned_variables"), tuned["variables"])

    exports = os.path.join(workdir, "onnx")
    before = export_and_measure(fn, variables, x1, os.path.join(exports, "teacher.onnx"),
                                config.device)
    after = export_and_measure(pruned.fn, tuned["variables"], x1,
                               os.path.join(exports, "pruned.onnx"), config.device)
    before["accuracy"] = summary["test_accuracy"]
    after["accuracy"] = tuned["test"]["accuracy"]
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
        "before": before, "after": after, "kept_channels": sizes,
        "removed_params": pruned.removed_params, "gate_history": history[-1:],
        "wall_seconds": time.time() - start,
        "settings": {"gates": config.gates.to_dict(), "finetune": config.finetune.to_dict()},
    }
    table = _table([("teacher", before), ("pruned + fine-tuned", after)])
    text = (f"{table}\n\naccuracy right after pruning (before fine-tune): "
            f"{after_prune['accuracy'] * 100:.2f}%\nFLOPs reduction "
            f"{result['flops_reduction']:.2f}x, ONNX speed-up {result['speedup_batch1']:.2f}x "
            f"(batch 1), {result['speedup_batch32']:.2f}x (batch 32) on {config.device}")
    print(text)
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(workdir, "result.md"), "w") as f:
        f.write(text + "\n")
    if config_lib.publishes(config, workdir):   # `publish` set and the default workdir
        root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "benchmarks", "results")
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, f"{config.experiment_name}.json"), "w") as f:
            json.dump(result, f, indent=2)
    return result
