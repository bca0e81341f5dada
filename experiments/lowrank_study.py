"""Low-rank study on trained models: SVD vs data-aware closed form vs learned.

For each model (a cached teacher from ``experiments.preamble``):

1. per-layer output error at EQUAL rank (every factorizable layer at
   ``equal_rank_fraction`` of its full rank), on held-out validation images, both for each
   layer alone (fed the original network's activations) and inside the factorized network;
2. test accuracy at 1.5x and 2x fewer FLOPs (ranks allocated by ``lowrank.allocation``
   under the FLOPs budget) for each method, before and after a short distillation
   fine-tune of the whole factorized model (``core.train``);
3. onnxruntime latency of the original and of every factorized model (exported with
   parity checks), medians on ``latency_device`` measured side by side in interleaved
   rounds (``export.runners.measure_interleaved``).

Equal budgets: "learned" refines its factors for ``learn.steps`` before its accuracy
"before fine-tune"; SVD and data-aware get those steps as extra fine-tuning
(``finetune_steps``), so every method trains the same number of steps in all.

``main`` writes ``result.json`` and ``result.md`` in the workdir and nothing elsewhere.
``publish`` writes them as ``benchmarks/results/<results_name>_<model>.json`` / ``.md``
(and the combined ``<results_name>.json`` / ``.md``); ``experiments.run`` calls it only
for a config with ``publish`` set in its default workdir runs/<experiment>, and
``benchmarks/lowrank.py`` calls it explicitly.

Run:  python run.py --exp=lowrank_resnet20   (or lowrank_vit, lowrank_mixer, lowrank_tiny)
      python benchmarks/lowrank.py [--fresh] [lowrank_resnet20 lowrank_vit ...]
"""
import functools
import glob
import json
import os
import time

import jax
import numpy as np

import export
import lowrank
from export import machine
from core import losses, trace as trace_lib, train as train_lib
from experiments import preamble, registry
from export import runners
from lowrank import calibration


def _calibration_batches(dataset, config):
    return [dataset.train_batch(step, config.batch_size, seed=1234, augmentation=False)[0]
            for step in range(config.calibration_batches)]


def _validation_batches(dataset, config):
    batches = []
    for x, _, w in dataset.eval_batches("validation", 500):
        batches.append(x[w > 0])
        if len(batches) >= config.error_batches:
            break
    return batches


def _accuracy(fn, variables, dataset) -> float:
    return float(train_lib.evaluate(fn, variables, dataset, "test")["accuracy"])


def finetune_steps(config, method: str) -> int:
    """Equal training budgets: "learned" has spent ``learn.steps`` refining its factors
    before the fine-tune, so every other method fine-tunes that many steps more."""
    return int(config.finetune.steps) + (0 if method == "learned" else int(config.learn.steps))


def _finetune(out, teacher_fn, teacher_vars, dataset, config, workdir, steps) -> dict:
    """Distils the teacher into the factorized model (all its parameters) for ``steps``."""
    ft = config.finetune.copy_and_resolve_references()
    ft.steps = steps
    kd_fn = jax.jit(teacher_fn)
    loss_fn = losses.distillation_from(functools.partial(kd_fn, teacher_vars),
                                       ft.kd_temperature, ft.kd_alpha)
    # train() copies the variables before it donates its state: the teacher's stay intact.
    return train_lib.train(train_lib.frozen_model(out.fn, out.variables), dataset, ft, workdir,
                           loss_fn=loss_fn, show_progress=False)


def _exported(fn, variables, example, path) -> dict:
    """The model as ONNX (parity-checked by the export); timed later with all the others."""
    result = export.to_onnx(fn, variables, example, path=path)
    return {"onnx": path, "parity_max_rel_error": float(result.parity.max_relative_error),
            "onnx_ops": result.op_counts}


def _time_side_by_side(latencies, config, rounds: int = 3, runs: int = 30):
    """Median latency of every exported model, measured in interleaved rounds so that the
    load drift of a shared machine hits the original and each factorized model alike."""
    runner = runners.get_runner(config.latency_device)
    measured = runners.measure_interleaved(runner, [lat["onnx"] for lat in latencies],
                                           (config.latency_batch,), runs, rounds)
    for lat, per_batch in zip(latencies, measured):
        lat["median_ms"] = float(per_batch[config.latency_batch].median_ms)


def _equal_rank_study(fn, variables, example, calib, stats, held_out, config) -> dict:
    sites, _ = lowrank.find_sites(trace_lib.trace(fn, variables, example))
    ranks = {s.path: max(1, int(round(config.equal_rank_fraction * s.geometry.full_rank)))
             * s.geometry.groups for s in sites}
    per_method = {}
    for method in config.methods:
        start = time.time()
        out = lowrank.factorize(fn, variables, example, ranks=ranks, method=method,
                                data=calib, stats=stats, eps=config.eps,
                                learn=config.learn.to_dict())
        per_method[method] = {
            "isolated": lowrank.isolated_errors(out, variables, held_out),
            "in_network": lowrank.in_network_errors(out, variables, held_out),
            "seconds": time.time() - start}
    layers = []
    for s in sites:
        row = {"path": s.path, "primitive": s.primitive, "m": s.geometry.m,
               "n": s.geometry.n, "groups": s.geometry.groups, "rank": ranks[s.path]}
        for method, errs in per_method.items():
            row[f"{method}_isolated"] = errs["isolated"][s.path]
            row[f"{method}_in_network"] = errs["in_network"][s.path]
        layers.append(row)
    summary = {}
    for method, errs in per_method.items():
        summary[method] = {kind: float(np.mean(list(errs[kind].values())))
                           for kind in ("isolated", "in_network")}
        summary[method]["seconds"] = per_method[method]["seconds"]
    for method in summary:
        for kind in ("isolated", "in_network"):
            summary[method][f"{kind}_vs_svd"] = (summary[method][kind] /
                                                  max(summary["svd"][kind], 1e-30))
    return {"rank_fraction": config.equal_rank_fraction, "layers": layers,
            "mean": summary}


def run_model(config, workdir: str) -> dict:
    module, teacher_vars, teacher_summary = preamble.get_teacher(config.teacher)
    dataset = preamble.load_data(config.teacher)

    def fn(variables, x):
        return module.apply(variables, x, train=False)
    calib = _calibration_batches(dataset, config)
    held_out = _validation_batches(dataset, config)
    example = calib[0][:config.latency_batch]
    sites, _ = lowrank.find_sites(trace_lib.trace(fn, teacher_vars, example))
    ff = lowrank.FactoredFunction(fn, teacher_vars, [s.path for s in sites])
    stats = calibration.collect(ff, teacher_vars, calib)

    report = {"model": config.teacher.model, "teacher": teacher_summary,
              "machine": machine.describe(), "config": config.to_dict()}
    t0 = time.time()
    report["equal_rank"] = _equal_rank_study(fn, teacher_vars, example, calib, stats,
                                             held_out, config)
    print(f"[{config.teacher.model}] equal-rank errors: "
          + ", ".join(f"{m} {v['isolated']:.4f}/{v['in_network']:.4f}"
                      for m, v in report["equal_rank"]["mean"].items()))
    original = {"test_accuracy": _accuracy(fn, teacher_vars, dataset),
                "latency": _exported(fn, teacher_vars, example,
                                     os.path.join(workdir, "original.onnx"))}
    report["original"] = original
    rows = []
    for reduction in config.flops_reductions:
        for method in config.methods:
            start = time.time()
            out = lowrank.factorize(fn, teacher_vars, example, budget=1.0 / reduction,
                                    method=method, data=calib, stats=stats, eps=config.eps,
                                    rank_multiple=config.rank_multiple,
                                    learn=config.learn.to_dict())
            row = {"flops_reduction_target": reduction, "method": method,
                   "flops_before": out.flops_before, "flops_after": out.flops_after,
                   "flops_reduction": out.flops_before / out.flops_after,
                   "layers_factorized": len(out.layers), "ranks": out.ranks(),
                   "test_accuracy": _accuracy(out.fn, out.variables, dataset)}
            name = f"{method}_{reduction:g}x"
            row["latency"] = _exported(out.fn, out.variables, example,
                                       os.path.join(workdir, f"{name}.onnx"))
            tuned = _finetune(out, fn, teacher_vars, dataset, config,
                              os.path.join(workdir, "finetune", name),
                              finetune_steps(config, method))
            row["test_accuracy_finetuned"] = float(tuned["test"]["accuracy"])
            row["finetune_steps"] = int(tuned["steps"])
            row["training_steps"] = row["finetune_steps"] + (
                int(config.learn.steps) if method == "learned" else 0)
            row["seconds"] = time.time() - start
            rows.append(row)
            print(f"[{config.teacher.model}] {name}: FLOPs /{row['flops_reduction']:.2f}, "
                  f"acc {row['test_accuracy']:.4f} -> {row['test_accuracy_finetuned']:.4f} "
                  f"after {row['training_steps']} training steps")
    _time_side_by_side([original["latency"]] + [r["latency"] for r in rows], config)
    report["budgets"] = rows
    report["seconds"] = time.time() - t0
    return report


def markdown(report: dict) -> str:
    model = report["model"]
    lines = [f"# Low-rank decomposition: {model} on Fashion-MNIST", "",
             f"Teacher test accuracy {report['original']['test_accuracy']:.4f}; machine: "
             f"{machine.line(report['machine'], 'onnxruntime')}.", "",
             f"## Per-layer output error at equal rank ({report['equal_rank']['rank_fraction']:g}"
             " x full rank), held-out validation images", "",
             "Relative error ||y - y*||^2 / ||y*||^2 of each layer's linear output: *isolated* "
             "= the layer alone on the original network's activations; *in-network* = inside "
             "the factorized network.", "",
             "| method | mean isolated | vs SVD | mean in-network | vs SVD |",
             "|---|---|---|---|---|"]
    for method, v in report["equal_rank"]["mean"].items():
        lines.append(f"| {method} | {v['isolated']:.4f} | {v['isolated_vs_svd']:.2f} | "
                     f"{v['in_network']:.4f} | {v['in_network_vs_svd']:.2f} |")
    lines += ["", "## Accuracy and latency under a FLOPs budget", "",
              f"Original: test accuracy {report['original']['test_accuracy']:.4f}, "
              f"onnxruntime {report['original']['latency']['median_ms']:.3f} ms "
              f"(batch {report['config']['latency_batch']}, {report['config']['latency_device']}).",
              "", "| target | method | FLOPs reduction | layers | test acc | after fine-tune "
              "| latency ms | speed-up |", "|---|---|---|---|---|---|---|---|"]
    base = report["original"]["latency"]["median_ms"]
    for row in report["budgets"]:
        lat = row["latency"]["median_ms"]
        lines.append(f"| {row['flops_reduction_target']:g}x | {row['method']} | "
                     f"{row['flops_reduction']:.2f}x | {row['layers_factorized']} | "
                     f"{row['test_accuracy']:.4f} | {row['test_accuracy_finetuned']:.4f} | "
                     f"{lat:.3f} | {base / lat:.2f}x |")
    learn_steps = report["config"]["learn"]["steps"]
    lines += ["", f"Equal training budgets: `learned` refines its factors for {learn_steps} steps "
              f"and is then distilled for {report['config']['finetune']['steps']} steps; every "
              f"other method is distilled for {learn_steps} steps more (all parameters, "
              "BatchNorm statistics frozen). Latencies: medians of interleaved rounds.",
              f"Total time {report['seconds'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def main(config, workdir: str) -> dict:
    """Runs the study; writes ``result.json`` / ``result.md`` in ``workdir`` only."""
    report = run_model(config, workdir)
    write_report(report, os.path.join(workdir, "result"))
    return report


def publish(config, report: dict) -> None:
    """The report into benchmarks/results, with the combined table of every model."""
    os.makedirs(registry.RESULTS, exist_ok=True)
    write_report(report, os.path.join(registry.RESULTS,
                                      f"{config.results_name}_{config.teacher.model}"))
    combine(config.results_name)


def write_report(report: dict, stem: str) -> None:
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(stem + ".md", "w") as f:
        f.write(markdown(report))
    print(f"wrote {stem}.json and .md")


def combine(results_name: str) -> None:
    """``<results_name>.json`` / ``.md``: every model's report found in benchmarks/results."""
    reports = []
    for path in sorted(glob.glob(os.path.join(registry.RESULTS, f"{results_name}_*.json"))):
        with open(path) as f:
            reports.append(json.load(f))
    reports = [r for r in reports if isinstance(r, dict) and "equal_rank" in r
               and r.get("config", {}).get("results_name") == results_name]
    with open(os.path.join(registry.RESULTS, results_name + ".json"), "w") as f:
        json.dump({"models": {r["model"]: r for r in reports}}, f, indent=1, default=str)
    with open(os.path.join(registry.RESULTS, results_name + ".md"), "w") as f:
        f.write("\n".join(markdown(r) for r in reports))

