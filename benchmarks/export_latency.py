"""Every zoo model (full config): FLOPs, params, JAX and ONNX latency, export parity error.

Shows that each model leaves as ONNX that reproduces it, and what the export costs or gains
in speed. JAX runs jitted on the CPU (XLA uses all cores); onnxruntime runs the cleaned
export on the device named by --device (default ort-cpu-2t: the same two cores). Latency is
the median of repeated runs at batch 1 and 32, with JAX and ONNX timed side by side.

  python benchmarks/export_latency.py            # ~5-10 min on 2 shared cores
  python benchmarks/export_latency.py --models resnet20,mobilenetv2

Writes benchmarks/results/export_latency.json and .md.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import export  # noqa: E402
from core import cost  # noqa: E402
from export.parity import batch_variant  # noqa: E402
from models import zoo  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
BATCHES = (1, 32)


def time_jax(fn, variables, inputs, min_runs=5, min_seconds=1.0):
    jitted = jax.jit(fn)
    jax.block_until_ready(jitted(variables, *inputs))
    samples, start = [], time.perf_counter()
    while len(samples) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        jax.block_until_ready(jitted(variables, *inputs))
        samples.append((time.perf_counter() - t0) * 1e3)
        if len(samples) >= 200:
            break
    return float(np.median(samples))


def benchmark_model(name, runner):
    fn, variables, x = zoo.instantiate(name, tiny=False, batch=2)
    report = cost.count(fn, variables, x[:1])
    result = export.to_onnx(fn, variables, x)
    row = {"model": name, "flops_batch1": int(report.flops), "params": int(report.params),
           "parity_max_relative_error": result.parity.max_relative_error,
           "onnx_nodes": sum(result.op_counts.values()),
           "onnx_transposes": result.transpose_count}
    for batch in BATCHES:
        inputs = batch_variant([x], batch)
        feeds = dict(zip(result.input_names, inputs))
        row[f"jax_ms_b{batch}"] = time_jax(fn, variables, inputs)
        m = runner.measure(result.model, inputs=feeds)
        row[f"onnx_ms_b{batch}"] = m.median_ms
        row[f"onnx_p90_ms_b{batch}"] = m.p90_ms
        row[f"onnx_peak_mem_mb_b{batch}"] = (m.peak_memory_bytes or 0) / 2 ** 20
    return row


def markdown(rows, device, seconds):
    lines = [f"# Zoo export and latency (JAX jit vs onnxruntime `{device}`)", "",
             f"Full configs; median latency in ms. Run: `python benchmarks/export_latency.py` "
             f"({seconds / 60:.1f} min, 2 shared cores, so treat ratios, not absolute values).",
             "", "| model | MFLOPs (b=1) | params | JAX b1 | ONNX b1 | JAX b32 | ONNX b32 | "
             "parity rel. err | Transposes |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error'][:80]} | | | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['flops_batch1'] / 1e6:.1f} | {r['params']:,} | "
            f"{r['jax_ms_b1']:.2f} | {r['onnx_ms_b1']:.2f} | {r['jax_ms_b32']:.1f} | "
            f"{r['onnx_ms_b32']:.1f} | {r['parity_max_relative_error']:.1e} | "
            f"{r['onnx_transposes']} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="ort-cpu-2t")
    parser.add_argument("--models", default=",".join(zoo.ZOO))
    parser.add_argument("--out", default=os.path.join(RESULTS, "export_latency"))
    args = parser.parse_args()
    runner = export.get_runner(args.device, runs=30, warmup=5, min_time_s=1.0)
    start, rows = time.time(), []
    for name in args.models.split(","):
        try:
            rows.append(benchmark_model(name, runner))
        except Exception as error:  # a failing model is a result, not the end of the table
            rows.append({"model": name, "error": f"{type(error).__name__}: {error}"})
        print(json.dumps(rows[-1]), flush=True)
    seconds = time.time() - start
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"device": args.device, "rows": rows, "seconds": seconds}, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(rows, args.device, seconds))
    print(markdown(rows, args.device, seconds))


if __name__ == "__main__":
    main()
