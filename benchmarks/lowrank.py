"""Low-rank study on trained models: SVD vs data-aware closed form vs learned.

For each model (a cached teacher from ``core.teacher``):

1. per-layer output error at EQUAL rank (every factorizable layer at
   ``equal_rank_fraction`` of its full rank), on held-out validation images, both for each
   layer alone (fed the original network's activations) and inside the factorized network;
2. test accuracy at 1.5x and 2x fewer FLOPs (ranks allocated by ``lowrank.allocation``
   under the FLOPs budget) for each method, before and after a short distillation
   fine-tune of the whole factorized model (``core.train``);
3. onnxruntime latency of the original and of every factorized model (exported with
   parity checks), median of repeated runs on ``latency_device``, measured side by side.

Writes ``result.json`` and ``result.md`` in the workdir. Publishes them as
``benchmarks/results/<results_name>_<model>.json`` / ``.md`` (and the combined
``<results_name>.json`` / ``.md``) only when run as the benchmark script, or through run.py
with the config's ``publish`` set and the default workdir runs/<experiment>; so
``python run.py --exp=lowrank_tiny --workdir=/tmp/x`` writes nothing into the repository.

Run:  python run.py --exp=lowrank_resnet20   (or lowrank_vit, lowrank_mixer, lowrank_tiny)
      python benchmarks/lowrank.py [--fresh] [lowrank_resnet20 lowrank_vit ...]
      (runs them in turn in runs/<name> and publishes)
"""
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import export  # noqa: E402
import lowrank  # noqa: E402
from core import losses, teacher as teacher_lib, trace as trace_lib, train as train_lib  # noqa
from data import pipeline  # noqa: E402
from export import runners  # noqa: E402
from lowrank import calibration  # noqa: E402
from benchmarks import machine  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")


def _calibration_batches(dataset, config):
    return [pipeline.train_batch(dataset, step, config.batch_size, seed=1234,
                                 augmentation=False)[0]
            for step in range(config.calibration_batches)]


def _validation_batches(dataset, config):
    batches = []
    for x, _, w in pipeline.eval_batches(dataset, "validation", 500):
        batches.append(x[w > 0])
        if len(batches) >= config.error_batches:
            break
    return batches


def _accuracy(fn, variables, dataset) -> float:
    return float(train_lib.evaluate(fn, variables, dataset, "test")["accuracy"])


def _finetune(out, teacher_fn, teacher_vars, dataset, config, workdir) -> dict:
    """Distils the teacher into the factorized model (all its parameters) for a few steps."""
    ft = config.finetune
    kd_fn = jax.jit(teacher_fn)
    loss_fn = losses.distillation_from(functools.partial(kd_fn, teacher_vars),
                                       ft.kd_temperature, ft.kd_alpha)
    # train() donates its state: give it copies, not the arrays shared with the teacher.
    own = jax.tree.map(lambda a: jnp.array(a, copy=True), out.variables)
    model = train_lib.TrainableModel(own, lambda v, x, rng: (out.fn(v, x), {}), out.fn)
    result = train_lib.train(model, dataset, ft, workdir, loss_fn=loss_fn,
                             show_progress=False)
    return result


def _latency(fn, variables, example, config, path) -> dict:
    result = export.to_onnx(fn, variables, example, path=path)
    runner = runners.get_runner(config.latency_device)
    samples = [runner.measure(result.model, batch=config.latency_batch).median_ms
               for _ in range(3)]
    return {"median_ms": float(np.median(samples)), "parity_max_rel_error":
            float(result.parity.max_relative_error), "onnx_ops": result.op_counts}


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
    module, teacher_vars, teacher_summary = teacher_lib.get_teacher(config.teacher)
    dataset = teacher_lib.load_data(config.teacher)

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
                "latency": _latency(fn, teacher_vars, example, config,
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
            row["latency"] = _latency(out.fn, out.variables, example, config,
                                      os.path.join(workdir, f"{name}.onnx"))
            tuned = _finetune(out, fn, teacher_vars, dataset, config,
                              os.path.join(workdir, "finetune", name))
            row["test_accuracy_finetuned"] = float(tuned["test"]["accuracy"])
            row["finetune_steps"] = int(tuned["steps"])
            row["seconds"] = time.time() - start
            rows.append(row)
            print(f"[{config.teacher.model}] {name}: FLOPs /{row['flops_reduction']:.2f}, "
                  f"acc {row['test_accuracy']:.4f} -> {row['test_accuracy_finetuned']:.4f} "
                  f"after fine-tune, {row['latency']['median_ms']:.3f} ms "
                  f"(original {original['latency']['median_ms']:.3f} ms)")
    report["budgets"] = rows
    report["seconds"] = time.time() - t0
    return report


def markdown(report: dict) -> str:
    model = report["model"]
    lines = [f"# Low-rank decomposition: {model} on Fashion-MNIST", "",
             f"Teacher test accuracy {report['original']['test_accuracy']:.4f}; machine: "
             f"{report['machine']['cpu']}, {report['machine']['cores']} logical "
             f"cores (shared), onnxruntime {report['machine']['onnxruntime']}, load average "
             f"{report['machine']['load_average_at_start']}.", "",
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
    lines += ["", f"Fine-tune: {report['config']['finetune']['steps']} steps of distillation "
              "from the teacher (all parameters, BatchNorm statistics frozen).",
              f"Total time {report['seconds'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def main(config, workdir: str, publish: bool = None) -> dict:
    """Runs the study into ``workdir``; publishes into benchmarks/results when ``publish``
    (default: ``config_lib.publishes``: the config's ``publish`` in the default workdir)."""
    from core import config as config_lib
    report = run_model(config, workdir)
    write_report(report, os.path.join(workdir, "result"))
    if publish if publish is not None else config_lib.publishes(config, workdir):
        os.makedirs(RESULTS, exist_ok=True)
        stem = os.path.join(RESULTS, f"{config.results_name}_{config.teacher.model}")
        write_report(report, stem)
        combine(config.results_name)
    return report


def write_report(report: dict, stem: str) -> None:
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(stem + ".md", "w") as f:
        f.write(markdown(report))
    print(f"wrote {stem}.json and .md")


def combine(results_name: str) -> None:
    """``<results_name>.json`` / ``.md``: every model's report found in benchmarks/results."""
    import glob
    reports = []
    for path in sorted(glob.glob(os.path.join(RESULTS, f"{results_name}_*.json"))):
        with open(path) as f:
            reports.append(json.load(f))
    reports = [r for r in reports if isinstance(r, dict) and "equal_rank" in r
               and r.get("config", {}).get("results_name") == results_name]
    with open(os.path.join(RESULTS, results_name + ".json"), "w") as f:
        json.dump({"models": {r["model"]: r for r in reports}}, f, indent=1, default=str)
    with open(os.path.join(RESULTS, results_name + ".md"), "w") as f:
        f.write("\n".join(markdown(r) for r in reports))


def _main_cli(argv) -> None:
    """The benchmark script: each study in its default workdir, published."""
    import argparse
    from core import config as config_lib, workdir as workdir_lib
    parser = argparse.ArgumentParser(description="low-rank study; publishes its results")
    parser.add_argument("names", nargs="*",
                        default=["lowrank_resnet20", "lowrank_vit", "lowrank_mixer"])
    parser.add_argument("--fresh", action="store_true",
                        help="move each workdir's earlier content aside and start over")
    args = parser.parse_args(argv)
    for name in args.names:
        cfg = config_lib.load(name)
        out_dir = os.path.join(ROOT, "runs", cfg.experiment_name)
        with workdir_lib.prepared(cfg, out_dir, fresh=args.fresh):
            main(cfg, out_dir, publish=True)


if __name__ == "__main__":
    _main_cli(sys.argv[1:])
