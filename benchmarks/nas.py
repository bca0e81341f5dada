"""NAS study: predictor quality on held-out architectures against baselines, and the searched
architectures against width-scaled ResNet-20s and channel-pruned models at measured latency.

1. Runs the NAS experiment (``experiments.nas_search``; its workdir caches every stage, so a finished
   run is only read back) and reports the predictors on held-out sampled architectures:
   Kendall tau / Spearman for accuracy, within-10% and tau for latency and memory, GNN vs
   DONNA's linear model on per-block distillation losses, a one-hot MLP and FLOPs alone.
2. One fine-tune recipe for every model (``nas.finetune``, the config's ``finetune``
   section: optimizer, steps, learning rates chosen on validation, KD from the teacher,
   BatchNorm trained): the width-scaled teachers (uniform channel multipliers of ResNet-20)
   train by it from scratch; every measured front architecture is reported as assembled,
   after BatchNorm recalibration and after the same fine-tune (resumable workdirs).
3. Channel-pruned ResNet-20s where the pruning experiments have run
   (runs/prune_resnet20_*/onnx/pruned.onnx, their accuracy from benchmarks/results).
4. Every model (teacher, baselines, front) timed in the same interleaved rounds, twice
   (``nas.architecture.measure_latencies``, p10), so the latencies compare.
5. At equal accuracy after equal fine-tuning: for every baseline, the fastest front model at
   least as accurate, and its speed-up (the issue's goal: at least 1.2x);
   ``speedup_vs_best_baseline`` is the smallest of these (the baseline the search does worst
   against; null when some baseline has no front model as accurate), ``no_finetune_gap_pt``
   the chosen architecture's fine-tuned minus assembled accuracy in points.

6. The device-specific search (``search.devices``, experiments/nas_devices.py): each
   device's choice at equal accuracy timed on every device, and the int8 objective's effect.

Writes benchmarks/results/nas.json, nas.md, nas_pareto.png and nas_devices.png.

Run:  python benchmarks/nas.py [--exp=nas_fmnist] [--workdir=runs/nas_fmnist]
      [--multipliers=0.5,0.75]
Expected: the NAS run (about two hours on 2 CPU cores, see nas/configs/nas_fmnist.py) plus
about 10 minutes per model and learning rate of the fine-tune (2 baselines and about 6
front models at 2 learning rates: about 2.5 hours).
"""
import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import onnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from core import train as train_lib  # noqa: E402
from experiments import nas_search as pipeline, registry, shared_json  # noqa: E402
from export.onnx_export import to_onnx  # noqa: E402
from export.runners import get_runner  # noqa: E402
from models import resnet  # noqa: E402
from nas import architecture, device_search, finetune, pareto_plot  # noqa: E402
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


def scaled_baseline(cfg, multiplier, workdir, teacher_fn, teacher_variables, dataset, x1):
    """ResNet-20 with every width times ``multiplier``, trained from scratch by the recipe
    (``nas.finetune``); its row and its ONNX file (saved once)."""
    width = max(4, int(round(16 * multiplier)))
    module = resnet.resnet_cifar(20, width=width)
    path = os.path.join(workdir, "model.onnx")

    def compute():
        variables = module.init(jax.random.key(0), jnp.zeros((1,) + dataset.image_shape))
        tuned = finetune.finetune(train_lib.linen_model(module, variables), teacher_fn,
                                  teacher_variables, dataset, cfg.finetune, workdir, True)
        fn = lambda v, x: module.apply(v, x, train=False)
        to_onnx(fn, tuned["variables"], x1, path=path, dynamic_batch=False)
        return {"multiplier": multiplier, "width": width,
                **{k: v for k, v in tuned.items() if k != "variables"}}
    row = shared_json(os.path.join(workdir, "finetuned.json"), compute)   # not the old rows
    return {"name": f"ResNet-20 x{multiplier:g} width", "kind": "scaled", "onnx": path,
            "test_accuracy": row["test_accuracy"], "learning_rate": row["learning_rate"]}


def front_model(cfg, library, k, r, teacher_fn, teacher_variables, dataset, workdir):
    """A measured front architecture as assembled, recalibrated and fine-tuned by the recipe
    (the claim check run on it)."""
    # The NAS run's own claim-check directory: the chosen architecture is not trained twice.
    directory = pipeline.finetune_dir(cfg, workdir, r["arch"])
    claim = shared_json(os.path.join(directory, "claim_check.json"),
                    lambda: finetune.claim_check(library, tuple(r["arch"]), teacher_fn,
                                                 teacher_variables, dataset, cfg.finetune,
                                                 directory))
    return {"name": f"searched front #{k}", "kind": "searched",
            "onnx": os.path.join(workdir, f"front{k}.onnx"), "arch": list(r["arch"]),
            "choices": r["choices"],
            "note": " / ".join(r["choices"]),
            "assembled_accuracy": claim["assembled_test_accuracy"],
            "recalibrated_accuracy": claim["recalibrated_test_accuracy"],
            "test_accuracy": claim["finetuned_test_accuracy"],
            "learning_rate": claim["learning_rate"]}


def pruned_baselines(names):
    """Channel-pruned ResNet-20s (experiment names) whose run left its ONNX file and
    published its row."""
    rows = []
    for name in names:
        path = os.path.join(RESULTS, f"{name}.json")
        onnx_path = os.path.join(ROOT, "runs", name, "onnx", "pruned.onnx")
        if not (os.path.exists(path) and os.path.exists(onnx_path)):
            print(f"{name}: no published result or no {onnx_path}; left out (python run.py "
                  f"--exp={name})")
            continue
        with open(path) as f:
            p = json.load(f)
        if "accuracy_after_finetune" in p:
            rows.append({"name": f"channel-pruned ({name})", "kind": "pruned",
                         "onnx": onnx_path, "test_accuracy": p["accuracy_after_finetune"],
                         "note": "its own pruning recipe (gates + fine-tune)"})
    return rows


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


def headline(equal_accuracy, claim) -> dict:
    """``speedup_vs_best_baseline`` (the smallest speed-up over the baselines; None when a
    baseline has no front model as accurate) and ``no_finetune_gap_pt``."""
    speedups = [r["speedup"] for r in equal_accuracy]
    return {"speedup_vs_best_baseline": (min(speedups) if speedups and None not in speedups
                                         else None),
            "no_finetune_gap_pt": 100.0 * claim["gain"]}


def markdown(results) -> str:
    lines = ["# DONNA-style NAS on Fashion-MNIST (ResNet-20 teacher)", "",
             f"Machine: {machine.line(results['machine'])}, device `{results['device']}`.",
             "",
             "## Predictors on held-out sampled architectures", "",
             "| target | predictor | Kendall tau | Spearman | within 10% |", "|---|---|---|---|---|"]
    for target, models in results["predictors"].items():
        for name, m in models.items():
            if isinstance(m, dict):
                lines.append(f"| {target} | {name} | {m['kendall_tau']:.3f} | "
                             f"{m['spearman']:.3f} | {m['within_10pct']:.2f} |")
    agreement = results.get("finetune_agreement") or {}
    if agreement:
        taus = ", ".join(f"{label} {agreement[key]:.3f}" for key, label in (
            ("tau_assembled_accuracy", "assembled"), ("tau_recalibrated_accuracy",
                                                      "recalibrated"),
            ("tau_predictor", "the GNN fitted on the other samples")) if key in agreement)
        lines += ["", f"Target: {results.get('accuracy_target', 'assembled')} validation "
                  f"accuracy. Against {agreement['architectures']} sampled architectures "
                  f"fine-tuned {agreement['steps']} steps, Kendall tau: {taus}."]
    if results.get("retest_tau") is not None:
        lines += ["", f"Latency labels ({results.get('latency_statistic', 'median')} of "
                  f"interleaved rounds): test-retest Kendall tau {results['retest_tau']:.3f} "
                  "between two independent passes over the same sampled architectures."]
    ft = results["finetune"]
    lines += ["", "## Models after the same fine-tune, timed in the same interleaved rounds", "",
              f"Every trained row: {ft['steps']} steps of batch {ft['batch_size']}, "
              f"{ft['optimizer']}, learning rate chosen on validation from "
              f"{ft['learning_rates']}, KD from the teacher (T={ft['temperature']}), "
              "BatchNorm trained. Latency: p10 of two interleaved passes, batch 1.", "",
              "| model | assembled | recalibrated | test accuracy | lr | latency ms | note |",
              "|---|---|---|---|---|---|---|"]
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else "-"
    for r in results["models"]:
        lines.append(f"| {r['name']} | {cell(r.get('assembled_accuracy'))} | "
                     f"{cell(r.get('recalibrated_accuracy'))} | {r['test_accuracy']:.4f} | "
                     f"{r.get('learning_rate', '-')} | {r['latency_ms']:.3f} | "
                     f"{r.get('note', '')} |")
    lines += ["", "## Searched front vs baselines at equal accuracy", "",
              "| baseline | accuracy | latency ms | fastest front model at >= accuracy | "
              "speed-up |", "|---|---|---|---|---|"]
    for r in results["equal_accuracy"]:
        sp = f"{r['speedup']:.2f}x" if r.get("speedup") else "none as accurate"
        lat = f"{r['front_latency_ms']:.3f} ms" if r.get("speedup") else "-"
        lines.append(f"| {r['name']} | {r['test_accuracy']:.4f} | {r['latency_ms']:.3f} | "
                     f"{lat} | {sp} |")
    speedup = results["speedup_vs_best_baseline"]
    c = results["claim_check"]
    lines += ["", f"speedup_vs_best_baseline: "
              f"{f'{speedup:.2f}x' if speedup else 'none (a baseline has no front model as accurate)'}",
              "", "## Claim check: the chosen architecture without and with the fine-tune", "",
              f"Test accuracy {c['assembled_test_accuracy']:.4f} as assembled, "
              f"{c['recalibrated_test_accuracy']:.4f} with BatchNorm recalibrated, "
              f"{c['finetuned_test_accuracy']:.4f} after the fine-tune "
              f"(no_finetune_gap_pt {results['no_finetune_gap_pt']:+.2f}).", "",
              f"Timings (s): {json.dumps({k: round(v) for k, v in results['timings'].items()})}",
              ""]
    return "\n".join(lines + device_lines(results.get("device_search") or {}))


def device_lines(study) -> list:
    """The device-specific search's section: each device's choice at equal predicted
    accuracy timed on every device, the verdict, and the int8 objective's effect."""
    if not study:
        return []
    lines = ["## Device-specific search", "",
             f"Each device's own latency table and front, one accuracy predictor; choices at "
             f"equal predicted accuracy ({study['accuracy_target']:.4f}), assembled (no "
             "fine-tune), timed on every device in interleaved rounds (p10, batch 1).", "",
             device_search.markdown(study)]
    for device, v in study["verdict"].items():
        if v["own_is_fastest"] is None:
            lines.append(f"- {device}: the same architecture as the other devices.")
            continue
        lines.append(f"- {device}: its own choice is "
                     f"{'the fastest' if v['own_is_fastest'] else 'not the fastest'} there ("
                     + ", ".join(f"{sp:.2f}x vs {d}'s, accuracy {v['accuracy_gap_pt'][d]:+.2f} pt"
                                 for d, sp in v["speedup_vs_other"].items()) + ").")
    int8 = study.get("int8_objective")
    if int8:
        lines += ["", f"int8 ({int8['profile']}, post-training, fake-quant) of the "
                  f"{study['devices'][0]} choice:", "",
                  "| search | float test accuracy | int8 test accuracy | blocks |",
                  "|---|---|---|---|"]
        for label in ("with_objective", "without_objective"):
            r = int8[label]
            lines.append(f"| {label.replace('_', ' ')} | {r['test_accuracy']:.4f} | "
                         f"{r['int8_test_accuracy']:.4f} | {' / '.join(r['choices'])} |")
    return lines + [""]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exp", default="nas_fmnist")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--multipliers", default="0.5,0.75")
    parser.add_argument("--pruned", default="prune_resnet20_2x,prune_resnet20_4x",
                        help="channel-pruned baselines: experiments run in runs/<name>")
    parser.add_argument("--results_name", default="nas")
    parser.add_argument("--out", default=RESULTS, help="where the result files go")
    args = parser.parse_args(argv)
    cfg = registry.load(args.exp, [])
    workdir = os.path.abspath(args.workdir or os.path.join(ROOT, "runs", cfg.experiment_name))
    nas = run_nas(cfg, workdir)
    teacher_fn, teacher_variables, dataset, summary = pipeline.load_teacher(cfg)
    library, _ = pipeline.distilled_library(cfg, teacher_fn, teacher_variables, dataset,
                                            workdir)
    x1 = np.zeros((1,) + dataset.image_shape, np.float32)
    teacher_onnx = os.path.join(workdir, "teacher.onnx")
    to_onnx(teacher_fn, teacher_variables, x1, path=teacher_onnx, dynamic_batch=False)
    models = [{"name": "teacher (ResNet-20)", "kind": "teacher", "onnx": teacher_onnx,
               "test_accuracy": summary.get("test_accuracy",
                                            nas["teacher_measured"]["test_accuracy"])}]
    for m in [float(v) for v in args.multipliers.split(",") if v]:
        models.append(scaled_baseline(cfg, m, os.path.join(workdir, f"scaled_{m:g}"),
                                      teacher_fn, teacher_variables, dataset, x1))
    models += pruned_baselines([n for n in args.pruned.split(",") if n])
    models += [front_model(cfg, library, k, r, teacher_fn, teacher_variables, dataset,
                           workdir) for k, r in enumerate(nas["front"])]
    runner = get_runner(cfg.device, runs=cfg.measure.runs, warmup=cfg.measure.warmup)
    timed = architecture.measure_latencies(runner, [onnx.load(r["onnx"]) for r in models],
                                           cfg.measure.rounds, cfg.measure.runs, cfg.seed)
    for row, latency in zip(models, timed):
        row.update(latency)
    front = [r for r in models if r["kind"] == "searched"]
    baselines = [r for r in models if r["kind"] in ("scaled", "pruned")]
    equal_accuracy = speedups_at_equal_accuracy(front, baselines)
    results = {"experiment": cfg.experiment_name, "machine": machine.describe(),
               "device": cfg.device, "predictors": nas["predictors"], "models": models,
               "finetune": cfg.finetune.to_dict(),
               **{k: nas[k] for k in ("accuracy_tau_mean", "accuracy_tau_sd", "latency_tau_mean",
                                      "latency_tau_sd", "predictor_splits", "retest_tau",
                                      "latency_statistic", "latency_predictor") if k in nas},
               "block_table_retest_tau": nas.get("block_table", {}).get("retest_tau"),
               "models_retest_tau": architecture.retest_tau(models),
               "equal_accuracy": equal_accuracy, **headline(equal_accuracy, nas["claim_check"]),
               "claim_check": nas["claim_check"], "timings": nas["timings"],
               "latency_budget_ms": nas["latency_budget_ms"], "space_size": nas["space_size"],
               "students": nas["students"], "device_search": nas.get("device_search") or {},
               "accuracy_target": nas.get("accuracy_target", "assembled"),
               "finetune_agreement": nas.get("finetune_agreement") or {},
               "date": time.strftime("%Y-%m-%d %H:%M")}
    os.makedirs(args.out, exist_ok=True)
    extra = {label: [(r["latency_ms"], r["test_accuracy"]) for r in models if r["kind"] == kind]
             for label, kind in (("width-scaled ResNet-20", "scaled"),
                                 ("channel-pruned", "pruned"))}
    with open(pipeline.sampled_path(cfg, workdir)) as f:
        sampled = json.load(f)
    # The front as the search predicted it and as measured after the fine-tune; its
    # assembled accuracies beside it.
    extra["searched front, as assembled"] = [(r["latency_ms"], r["assembled_accuracy"])
                                             for r in front]
    front_plot = [{**predicted, "latency_ms": r["latency_ms"],
                   "test_accuracy": r["test_accuracy"]}
                  for predicted, r in zip(nas["front"], front)]
    pareto_plot.plot_fronts(sampled, front_plot, models[0],
                            os.path.join(args.out, f"{args.results_name}_pareto.png"),
                            nas["latency_budget_ms"], {k: v for k, v in extra.items() if v})
    if results["device_search"]:
        pareto_plot.plot_devices(results["device_search"],
                                 os.path.join(args.out, f"{args.results_name}_devices.png"))
    with open(os.path.join(args.out, f"{args.results_name}.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    text = markdown(results)
    with open(os.path.join(args.out, f"{args.results_name}.md"), "w") as f:
        f.write(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
