"""int8 quantization of trained Fashion-MNIST models: ours vs onnxruntime's quantize_static.

For each model with a cached teacher (ResNet-20 by default; MobileNetV2 and ViT when their
teachers exist, see ``--models``), runs the ``experiments.quantization`` program: test accuracy of
float, PTQ per-tensor and per-channel, each with and without cross-layer equalization and
bias correction, and QAT (JAX fake-quant); then the same float ONNX model quantized by us
(QDQ with our scales) and by ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel,
uint8 activations, the same calibration images), both evaluated in onnxruntime, and the
onnxruntime latency of float vs int8 at batch 1 and 32 (medians, one thread, side by side).

  python benchmarks/quant.py                       # ~30-60 min per model on 2 shared cores
  python benchmarks/quant.py --qat-steps 100       # shorter QAT
  python benchmarks/quant.py --smoke               # tiny untrained teacher, ~5 min
  python benchmarks/quant.py --models vit --retime 9   # re-time a finished row's ONNX
                                                       # models in 9 interleaved rounds

Goals from the issue: PTQ int8 within 0.5 points of float and QAT within 0.2; at least as
accurate as quantize_static; int8 at least 1.5x faster than float. Writes
benchmarks/results/quant.json and quant.md (whatever is measured, either way).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from export.machine import describe, line as machine_phrase  # noqa: E402
from experiments import preamble as teacher_lib  # noqa: E402
from experiments import quantization as experiment  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CONFIGS = {"resnet20": "quant_resnet20", "mobilenetv2": "quant_mobilenetv2",
           "vit": "quant_vit", "pruned_resnet20": "quant_pruned_resnet20"}


def machine():
    """benchmarks.machine.describe() plus the CPU's int8 instruction-set flags."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        flags = []
    info = describe()
    info["int8_flags"] = sorted(f for f in flags if f in (
        "avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile"))
    info["load_average_at_start"] = os.getloadavg()[0]
    return info


def config_for(model: str, smoke: bool, qat_steps=None):
    from experiments import registry
    config = registry.load(CONFIGS[model])
    if qat_steps is not None:
        config.qat.steps = qat_steps
    if smoke:
        config.teacher.tiny = True
        config.teacher.data_limit = 512
        config.teacher.train.steps = 20
        config.qat.steps = 5
        config.calibration_images = 128
        config.eval_limit = 256
        config.latency_runs = 10
    return config


def teacher_cached(config) -> bool:
    if config.get("pruned_experiment"):       # prune, then quantize: the pruning run's output
        workdir = config.get("pruned_workdir") or os.path.join("runs", config.pruned_experiment)
        return os.path.exists(os.path.join(workdir, "keep.json"))
    key = teacher_lib.teacher_key(config.teacher)
    return os.path.exists(os.path.join(teacher_lib.cache_root(), key, "summary.json"))


def machine_line(m) -> str:
    return (f"Machine: {machine_phrase(m, 'onnxruntime')}, int8 ISA "
            f"{', '.join(m['int8_flags'])}.")


def merged(previous, current, smoke: bool):
    """Rows of ``current`` replace the same models' rows of ``previous``; the others stay.

    Each model takes 10 to 60 minutes, so ``--models vit`` adds or refreshes one row
    without re-measuring the rest. Every row keeps the machine line it was measured under.
    """
    if not previous or previous.get("smoke") != smoke:
        return current
    fresh = {r["experiment"] for r in current["models"]}
    kept = [r for r in previous.get("models", []) if r.get("experiment") not in fresh]
    for r in kept:
        r.setdefault("machine", previous["machine"])
    done = {r["experiment"] for r in kept + current["models"]}
    skipped = sorted(set(previous.get("skipped", []) + current["skipped"]) - done)
    return dict(current, models=kept + current["models"], skipped=skipped)


def choices(row) -> list:
    """How each side's int8 model was chosen, on the validation split (rows measured before
    choices were made on validation have none)."""
    def listed(scores):
        return ", ".join(f"{name} {value:.4f}" for name, value in scores.items())
    lines = []
    if row.get("validation_accuracy"):
        lines.append(f"Ours: {row['best_ptq']}, chosen on validation accuracy "
                     f"({listed(row['validation_accuracy'])}).")
    if row.get("ort_calibration"):
        peer = row["ort_calibration"]
        lines.append(f"quantize_static (after {peer.get('pre_process', 'quant_pre_process')}): "
                     f"{peer['chosen']} calibration,"
                     f" chosen on validation accuracy in onnxruntime ({listed(peer['scores'])})"
                     + (f"; failed: {', '.join(peer['failures'])}" if peer["failures"] else "")
                     + ".")
    return lines + ([""] if lines else [])


def markdown(results) -> str:
    lines = ["# int8 quantization: ours vs onnxruntime quantize_static", "",
             "Accuracy on the Fashion-MNIST test set; latency: onnxruntime, 1 thread, median "
             "(models measured in different runs carry their own machine line).", ""]
    for r in results["models"]:
        a, o = r["accuracy"], r["onnx_accuracy"]
        title = r.get("experiment", r["model"])
        lines += [f"## {title}" + (" (smoke: tiny, untrained)" if results["smoke"] else ""),
                  "", machine_line(r.get("machine", results["machine"]))
                  + (f" Latencies: {r['latency_rounds']} interleaved rounds."
                     if r.get("latency_rounds") else ""), "",
                  "| configuration | test accuracy (JAX fake-quant) | delta vs float |",
                  "|---|---|---|"]
        for name, value in a.items():
            lines.append(f"| {name} | {value:.4f} | {100 * (value - a['float']):+.2f} pt |")
        lines += ["", "| ONNX model | accuracy in onnxruntime | batch 1 ms | batch 32 ms | "
                  "speed-up b1 / b32 |", "|---|---|---|---|---|"]
        lat = r["latency_ms"]
        f1, f32 = lat["float"]["batch1_median_ms"], lat["float"].get("batch32_median_ms")
        for name, acc in o.items():
            b1, b32 = lat[name]["batch1_median_ms"], lat[name].get("batch32_median_ms")
            lines.append(f"| {name} | {acc:.4f} | {b1:.3f} | {b32 or float('nan'):.3f} | "
                         f"{f1 / b1:.2f}x / {(f32 or 0) / (b32 or 1):.2f}x |")
        lines += [""] + choices(r)
        for name, p in r["parity"].items():
            lines.append(f"QDQ parity ({name}): top-1 agreement with JAX fake-quant "
                         f"{p['top1_agreement']:.4f}, max |ort - jax| {p['max_abs_error']:.3g} "
                         f"(logit scale {p['output_scale']:.3g}); onnxruntime integer kernels "
                         f"{p['integer_ops']}, float {p['float_ops']}"
                         + (f"; {p['sites_left_float']} activation sites left float "
                            f"(no integer kernel reads them)" if "sites_left_float" in p
                            else "") + ".")
        if r.get("graph_ops"):
            lines.append("Graph nodes (all / QuantizeLinear / DequantizeLinear): " + "; ".join(
                f"{name} {g['nodes']} / {g['QuantizeLinear']} / {g['DequantizeLinear']}"
                for name, g in r["graph_ops"].items()) + ".")
        if r.get("sensitivity_top5"):
            lines += ["", "Most sensitive layers (KL to float when quantized alone): " +
                      "; ".join(f"{s['layer']} {s['kl']:.2g}" for s in r["sensitivity_top5"])]
        lines.append("")
    return "\n".join(lines)


def retime(models, rounds: int, out: str) -> dict:
    """Re-measures the latencies of finished rows from the ONNX files their run left in
    runs/benchmarks/quant/<model>/onnx, in ``rounds`` interleaved rounds of the configured
    runs each (batch-1 times of one graph varied by 40% across three rounds on a shared
    machine); accuracy is not touched. The row's machine line becomes this run's."""
    import onnx
    from quant.comparison import latencies
    with open(os.path.join(out, "quant.json")) as f:
        results = json.load(f)
    rows = {r["experiment"]: r for r in results["models"]}
    for model in models:
        if model not in rows:
            raise SystemExit(f"{model}: no row in {out}/quant.json to re-time; run it first")
        row, config = rows[model], config_for(model, False)
        onnx_dir = os.path.join("runs", "benchmarks", "quant", model, "onnx")
        chosen = row["ort_calibration"]["chosen"]
        files = {name: os.path.join(onnx_dir, "float.onnx" if name == "float" else
                                    f"ort_candidates/ort_{chosen}.onnx"
                                    if name == "ort_quantize_static" else
                                    name[len("ours_"):] + ".onnx")
                 for name in row["latency_ms"]}
        missing = [path for path in files.values() if not os.path.exists(path)]
        if missing:
            raise SystemExit(f"{model}: the run's ONNX files are gone ({missing}); rerun "
                             f"python benchmarks/quant.py --models {model}")
        row["machine"] = machine()
        row["latency_ms"] = latencies({name: onnx.load(path) for name, path in files.items()},
                                      tuple(config.latency_batches), config.latency_threads,
                                      config.latency_runs * rounds // 3, rounds)
        row["latency_rounds"] = rounds
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet20,mobilenetv2,vit,pruned_resnet20",
                        help="comma-separated; models without a cached teacher are skipped")
    parser.add_argument("--smoke", action="store_true", help="tiny untrained teachers")
    parser.add_argument("--train-missing", action="store_true",
                        help="train teachers that are not cached (hours on 2 cores)")
    parser.add_argument("--qat-steps", type=int, default=None,
                        help="QAT steps (default: the config's; ~1-6 s each on 2 shared cores)")
    parser.add_argument("--retime", type=int, default=0, metavar="ROUNDS",
                        help="only re-time the finished rows of --models from their ONNX "
                             "files, in this many interleaved rounds")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    if args.retime:
        results = retime(args.models.split(","), args.retime, args.out)
        return _write(results, args.out, "quant")
    results = {"machine": machine(), "smoke": args.smoke, "models": [], "skipped": []}
    for model in args.models.split(","):
        config = config_for(model, args.smoke, args.qat_steps)
        if config.get("pruned_experiment") and (args.smoke or not teacher_cached(config)):
            print(f"{model}: needs the finished pruning run; skipped (python run.py "
                  f"--exp={config.pruned_experiment})")
            results["skipped"].append(model)
            continue
        if not (args.smoke or args.train_missing or teacher_cached(config)):
            print(f"{model}: no cached teacher; skipped (train it with python run.py "
                  f"--exp=train_teacher_{model})")
            results["skipped"].append(model)
            continue
        workdir = os.path.join("runs", "benchmarks", "quant" + ("_smoke" if args.smoke else ""),
                               model)
        os.makedirs(workdir, exist_ok=True)
        row = experiment.main(config, os.path.abspath(workdir))
        results["models"].append(dict(row, experiment=model, machine=results["machine"]))
    os.makedirs(args.out, exist_ok=True)
    name = "quant_smoke" if args.smoke else "quant"
    previous_path = os.path.join(args.out, name + ".json")
    if os.path.exists(previous_path):
        with open(previous_path) as f:
            results = merged(json.load(f), results, args.smoke)
    _write(results, args.out, name)


def _write(results, out: str, name: str) -> None:
    with open(os.path.join(out, name + ".json"), "w") as f:
        json.dump(results, f, indent=2, default=float)
    with open(os.path.join(out, name + ".md"), "w") as f:
        f.write(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
