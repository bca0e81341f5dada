"""Two CPU runtimes on the same models: onnxruntime (``ort-cpu-1t``) against LiteRT with
XNNPACK (``litert-cpu-1t``), one thread each, batch 1.

Why: a latency gain measured in one runtime need not hold in the other; before compressed
models ship as .tflite, this says how the two runtimes compare on the project's own exports.
Each model is exported from the same JAX function by ``export.to_onnx`` and
``export.to_tflite`` (both parity-checked on a real image); the MediaPipe selfie segmenter is
also timed as its original .tflite file, which says whether our re-export loses speed against
the file MediaPipe ships. All variants are timed in interleaved rounds (every runner and
model once per round, every other round in reverse order), so load drift on a shared machine
hits them alike.

  nice -n 10 python benchmarks/litert_vs_ort.py                 # ~1 min on 2 shared cores
  python benchmarks/litert_vs_ort.py --models resnet20 --rounds 3

Writes benchmarks/results/litert_vs_ort.json and .md (``--out`` to change).
"""
import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

import export  # noqa: E402
import models  # noqa: E402
from core import cost  # noqa: E402
from data import real_images  # noqa: E402
from export import machine  # noqa: E402
from export.runners import summarize  # noqa: E402
from models import real_tflite_models, zoo  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
SELFIE = "selfie_segmentation"
DEFAULT_MODELS = (SELFIE, "resnet20", "mobilenetv2")


def load_model(name):
    """``(fn, variables, x, original_tflite_path or None)``: x one real image at batch 1
    (RGB for the selfie segmenter, grey 28x28 for the full zoo models)."""
    if name == SELFIE:
        path = real_tflite_models.path(SELFIE)
        fn, variables, _ = models.from_tflite(path)
        x = real_images.load("evaluation", size=(256, 256), limit=1, dtype=np.float32)
        return fn, variables, x, str(path)
    fn, variables, example = zoo.instantiate(name, tiny=False, batch=1)
    x = real_images.load("evaluation", size=example.shape[1:3], limit=1, dtype=np.float32)
    return fn, variables, x.mean(axis=-1, keepdims=True), None


def export_variants(name, directory):
    """The model's variants as ``[(label, runner name, file)]`` and its export facts."""
    fn, variables, x, original = load_model(name)
    onnx_path = os.path.join(directory, f"{name}.onnx")
    tflite_path = os.path.join(directory, f"{name}.tflite")
    onnx_result = export.to_onnx(fn, variables, x, path=onnx_path)
    start = time.perf_counter()
    tflite_result = export.to_tflite(fn, variables, x, path=tflite_path)
    convert_s = time.perf_counter() - start
    report = cost.count(fn, variables, x)
    facts = {"mflops": report.flops / 1e6, "params": int(report.params),
             "onnx_parity": onnx_result.parity.max_relative_error,
             "tflite_parity": tflite_result.parity.max_relative_error,
             "tflite_convert_s": convert_s,
             "onnx_transposes": onnx_result.transpose_count,
             "tflite_transposes": tflite_result.transpose_count,
             "tflite_ops": tflite_result.op_counts}
    variants = [("onnx", "ort-cpu-1t", onnx_path), ("tflite", "litert-cpu-1t", tflite_path)]
    if original:
        variants.append(("original tflite", "litert-cpu-1t", original))
    return variants, facts


def time_interleaved(variants, runs, rounds):
    """``{(model, label): Measurement}`` over the pooled samples of ``rounds`` rounds, each
    timing every variant once (order reversed every other round)."""
    runners = {name: export.get_runner(name) for name in {v[2] for v in variants}}
    samples = {(v[0], v[1]): [] for v in variants}
    for round_index in range(rounds):
        order = variants if round_index % 2 == 0 else variants[::-1]
        for model, label, device, path in order:
            samples[(model, label)] += runners[device].measure(path, runs=runs).samples_ms
    devices = {(v[0], v[1]): v[2] for v in variants}
    return {key: summarize(devices[key], s) for key, s in samples.items()}


def markdown(rows, info, seconds, rounds, runs):
    lines = [
        "# onnxruntime `ort-cpu-1t` vs LiteRT (XNNPACK) `litert-cpu-1t`, batch 1",
        "",
        f"Median (p90) latency in ms over {rounds} interleaved rounds of {runs} runs; "
        "ratio = LiteRT / onnxruntime (below 1: LiteRT faster). The same JAX function "
        "exported by `export.to_onnx` and `export.to_tflite`, both parity-checked on a real "
        "image (max error relative to the output's scale). Run: `nice -n 10 python "
        f"benchmarks/litert_vs_ort.py` ({seconds / 60:.1f} min; {machine.line(info)}).",
        "",
        "| model | MFLOPs | params | ort ms | LiteRT ms (our .tflite) | ratio | LiteRT ms "
        "(original .tflite) | parity onnx / tflite | Transposes onnx / tflite | convert s |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        t = row["latency"]
        ms = lambda label: (f"{t[label]['median_ms']:.2f} ({t[label]['p90_ms']:.2f})"
                            if label in t else "-")
        ratio = t["tflite"]["median_ms"] / t["onnx"]["median_ms"]
        lines.append(
            f"| {name} | {row['mflops']:.1f} | {row['params']:,} | {ms('onnx')} | "
            f"{ms('tflite')} | {ratio:.2f} | {ms('original tflite')} | "
            f"{row['onnx_parity']:.1e} / {row['tflite_parity']:.1e} | "
            f"{row['onnx_transposes']} / {row['tflite_transposes']} | "
            f"{row['tflite_convert_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", default=os.path.join(RESULTS, "litert_vs_ort"))
    args = parser.parse_args()
    info = machine.describe("ai-edge-litert", "tensorflow-cpu")
    start = time.perf_counter()
    rows, variants = {}, []
    with tempfile.TemporaryDirectory() as directory:
        for name in args.models.split(","):
            found, rows[name] = export_variants(name, directory)
            variants += [(name, label, device, path) for label, device, path in found]
            print(f"[litert_vs_ort] exported {name}: {rows[name]}", flush=True)
        timed = time_interleaved(variants, args.runs, args.rounds)
    for (name, label), m in timed.items():
        rows[name].setdefault("latency", {})[label] = m.as_dict()
    seconds = time.perf_counter() - start
    result = {"machine": info, "runs": args.runs, "rounds": args.rounds, "batch": 1,
              "seconds": seconds, "models": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1, default=float)
    text = markdown(rows, info, seconds, args.rounds, args.runs)
    with open(args.out + ".md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
