"""NAS study: predictor quality on held-out architectures against baselines, and the searched
architectures against width-scaled ResNet-20s and channel-pruned models at measured latency.

1. Runs the NAS experiment (``experiments.nas_search``; its workdir caches every stage, so a finished
   run is only read back) and reports the predictors on held-out sampled architectures:
   Kendall tau / Spearman for accuracy, within-10% and tau for latency and memory, GNN vs
   DONNA's linear model on per-block distillation losses, a one-hot MLP and FLOPs alone.
2. Trains width-scaled teachers (uniform channel multipliers of ResNet-20) with the same
   knowledge distillation from the teacher (``core.train``, resumable), then exports and
   measures them side by side with the teacher and the searched front (saved ONNX files)
   in ONE process, so the latencies compare.
3. Reads channel-pruned ResNet-20 results if the pruning benchmarks have written them
   (benchmarks/results/prune_resnet20_*.json), placed at teacher latency / their speed-up.
4. At equal accuracy: for every baseline, the fastest front model at least as accurate, and
   its speed-up (the issue's goal: at least 1.2x).

Writes benchmarks/results/nas.json, nas.md and nas_pareto.png.

Run:  python benchmarks/nas.py [--exp=nas_fmnist] [--workdir=runs/nas_fmnist]
      [--multipliers=0.5,0.75] [--steps=1500]
Expected: the NAS run (about an hour on 2 CPU cores, see nas/configs/nas_fmnist.py) plus
about 10 minutes per width-scaled baseline.
"""
import argparse
import functools
import glob
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import onnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from core import losses, train as train_lib  # noqa: E402
from experiments import nas_search as pipeline, registry  # noqa: E402
from export.onnx_export import to_onnx  # noqa: E402
from export.runners import get_runner  # noqa: E402
from models import resnet  # noqa: E402
from nas import pareto_plot  # noqa: E402
from export import machine  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")




def run_nas(cfg, workdir) -> dict:
    path = os.path.join(workdir, "results.json")
    if os.path.exists(path):
        with open(path) as f:
            cached = json.load(f)
        if cached.get("config_hash") == pipeline.stage_hash(cfg, *cfg.keys()):
            return cached
    return json.loads(json.dumps(pipeline.main(cfg, workdir), default=float))


def train_scaled(cfg, multiplier, steps, workdir, teacher_fn, teacher_variables, dataset):
    """ResNet-20 with every width times ``multiplier``, trained by KD from the teacher."""
    out = os.path.join(workdir, "result.json")
    width = max(4, int(round(16 * multiplier)))
    module = resnet.resnet_cifar(20, width=width)
    variables = module.init(jax.random.key(0), jnp.zeros((1,) + dataset.image_shape))
    if os.path.exists(out):
        from core import checkpoint
        with open(out) as f:
            row = json.load(f)
        return module, checkpoint.load_pytree(os.path.join(workdir, "variables"), variables), row
    tcfg = ml_collections.ConfigDict(cfg.teacher.train.to_dict())
    tcfg.update(dict(steps=steps, warmup_steps=min(200, steps // 10), eval_every_epochs=0,
                     checkpoint_every=250, log_every=50))
    loss_fn = losses.distillation_from(functools.partial(teacher_fn, teacher_variables))
    result = train_lib.train(train_lib.linen_model(module, variables), dataset, tcfg,
                             workdir, loss_fn, show_progress=True)
    from core import checkpoint
    checkpoint.save_pytree(os.path.join(workdir, "variables"), result["variables"])
    row = {"multiplier": multiplier, "width": width, "steps": steps,
           "test_accuracy": result["test"]["accuracy"]}
    with open(out, "w") as f:
        json.dump(row, f)
    return module, result["variables"], row


def measure(runner, model, repeats=3) -> float:
    """Median over ``repeats`` runner measurements (each a median of many runs)."""
    return float(np.median([runner.measure(model).median_ms for _ in range(repeats)]))


def speedups_at_equal_accuracy(front, baselines):
    rows = []
    for b in baselines:
        better = [r for r in front if r["test_accuracy"] >= b["test_accuracy"]]
        if not better:
            rows.append({**b, "front_match": None, "speedup": None})
            continue
        fastest = min(better, key=lambda r: r["latency_ms"])
        rows.append({**b, "front_match": fastest["choices"],
                     "front_latency_ms": fastest["latency_ms"],
                     "front_accuracy": fastest["test_accuracy"],
                     "speedup": b["latency_ms"] / fastest["latency_ms"]})
    return rows


def markdown(results) -> str:
    lines = ["# DONNA-style NAS on Fashion-MNIST (ResNet-20 teacher)", "",
             f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} "
             f"logical cores (shared; load average {results['machine']['load_average_at_start']}), "
             f"device `{results['device']}`.", "",
             "## Predictors on held-out sampled architectures", "",
             "| target | predictor | Kendall tau | Spearman | within 10% |", "|---|---|---|---|---|"]
    for target, models in results["predictors"].items():
        for name, m in models.items():
            if isinstance(m, dict):
                lines.append(f"| {target} | {name} | {m['kendall_tau']:.3f} | "
                             f"{m['spearman']:.3f} | {m['within_10pct']:.2f} |")
    if results.get("retest_tau") is not None:
        lines += ["", f"Latency labels ({results.get('latency_statistic', 'median')} of "
                  f"interleaved rounds): test-retest Kendall tau {results['retest_tau']:.3f} "
                  "between two independent passes over the same sampled architectures."]
    lines += ["", "## Models (test accuracy, latency measured side by side)", "",
              "| model | test accuracy | latency ms | note |", "|---|---|---|---|"]
    for r in results["models"]:
        lines.append(f"| {r['name']} | {r['test_accuracy']:.4f} | {r['latency_ms']:.3f} | "
                     f"{r.get('note', '')} |")
    lines += ["", "## Searched front vs baselines at equal accuracy", "",
              "| baseline | accuracy | latency ms | fastest front model at >= accuracy | "
              "speed-up |", "|---|---|---|---|---|"]
    for r in results["equal_accuracy"]:
        sp = f"{r['speedup']:.2f}x" if r.get("speedup") else "none as accurate"
        lat = f"{r['front_latency_ms']:.3f} ms" if r.get("speedup") else "-"
        lines.append(f"| {r['name']} | {r['test_accuracy']:.4f} | {r['latency_ms']:.3f} | "
                     f"{lat} | {sp} |")
    c = results["claim_check"]
    lines += ["", "## Claim check: assembled vs end-to-end distillation fine-tune", "",
              f"Chosen architecture: test accuracy {c['assembled_test_accuracy']:.4f} as "
              f"assembled, {c['finetuned_test_accuracy']:.4f} after {c['steps']} steps of "
              f"end-to-end KD ({c['gain'] * 100:+.2f} points).", "",
              f"Timings (s): {json.dumps({k: round(v) for k, v in results['timings'].items()})}",
              ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exp", default="nas_fmnist")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--multipliers", default="0.5,0.75")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--results_name", default="nas")
    args = parser.parse_args(argv)
    cfg = registry.load(args.exp, [])
    workdir = os.path.abspath(args.workdir or os.path.join(ROOT, "runs", cfg.experiment_name))
    nas = run_nas(cfg, workdir)
    teacher_fn, teacher_variables, dataset, summary = pipeline.load_teacher(cfg)
    runner = get_runner(cfg.device, runs=100, warmup=10)
    x1 = np.zeros((1,) + dataset.image_shape, np.float32)
    models = [{"name": "teacher (ResNet-20)", "test_accuracy": summary.get(
        "test_accuracy", nas["teacher_measured"]["test_accuracy"]),
        "latency_ms": measure(runner, to_onnx(teacher_fn, teacher_variables, x1,
                                              dynamic_batch=False).model)}]
    for m in [float(v) for v in args.multipliers.split(",") if v]:
        module, variables, row = train_scaled(
            cfg, m, args.steps, os.path.join(workdir, f"scaled_{m:g}"), teacher_fn,
            teacher_variables, dataset)
        fn = lambda v, x, module=module: module.apply(v, x, train=False)
        models.append({"name": f"ResNet-20 x{m:g} width (KD {args.steps} steps)",
                       "test_accuracy": row["test_accuracy"], "kind": "scaled",
                       "latency_ms": measure(runner, to_onnx(fn, variables, x1,
                                                             dynamic_batch=False).model)})
    front = []
    for k, r in enumerate(nas["front"]):
        path = os.path.join(workdir, f"front{k}.onnx")
        if os.path.exists(path):
            r = {**r, "latency_ms": measure(runner, onnx.load(path))}
        front.append(r)
        models.append({"name": f"searched front #{k}", "test_accuracy": r["test_accuracy"],
                       "latency_ms": r["latency_ms"], "kind": "searched",
                       "note": " / ".join(r["choices"])})
    teacher_ms = models[0]["latency_ms"]
    for path in sorted(glob.glob(os.path.join(RESULTS, "prune_resnet20_*.json"))):
        with open(path) as f:
            p = json.load(f)
        if "speedup_batch1" in p and "accuracy_after_finetune" in p:
            models.append({"name": f"channel-pruned ({os.path.basename(path)[:-5]})",
                           "test_accuracy": p["accuracy_after_finetune"], "kind": "pruned",
                           "latency_ms": teacher_ms / p["speedup_batch1"],
                           "note": "teacher latency here / its measured speed-up"})
    baselines = [r for r in models if r.get("kind") in ("scaled", "pruned")] + models[:1]
    results = {"experiment": cfg.experiment_name, "machine": machine.describe(), "device": cfg.device,
               "predictors": nas["predictors"], "models": models,
               **{k: nas[k] for k in ("accuracy_tau_mean", "accuracy_tau_sd", "latency_tau_mean",
                                      "latency_tau_sd", "predictor_splits", "retest_tau",
                                      "front_retest_tau", "latency_statistic") if k in nas},
               "equal_accuracy": speedups_at_equal_accuracy(front, baselines),
               "claim_check": nas["claim_check"], "timings": nas["timings"],
               "latency_budget_ms": nas["latency_budget_ms"], "space_size": nas["space_size"],
               "students": nas["students"], "date": time.strftime("%Y-%m-%d %H:%M")}
    os.makedirs(RESULTS, exist_ok=True)
    extra = {"width-scaled ResNet-20": [(r["latency_ms"], r["test_accuracy"]) for r in models
                                        if r.get("kind") == "scaled"]}
    pruned = [(r["latency_ms"], r["test_accuracy"]) for r in models if r.get("kind") == "pruned"]
    if pruned:
        extra["channel-pruned"] = pruned
    with open(pipeline.sampled_path(cfg, workdir)) as f:
        sampled = json.load(f)
    pareto_plot.plot_fronts(sampled, front, {"latency_ms": teacher_ms, "test_accuracy":
                                             models[0]["test_accuracy"]},
                            os.path.join(RESULTS, f"{args.results_name}_pareto.png"),
                            nas["latency_budget_ms"], {k: v for k, v in extra.items() if v})
    with open(os.path.join(RESULTS, f"{args.results_name}.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    text = markdown(results)
    with open(os.path.join(RESULTS, f"{args.results_name}.md"), "w") as f:
        f.write(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
