"""Why pruned ResNet-20s speed up less than their FLOPs fall: each conv timed at fewer channels.

Run:  python benchmarks/width_latency.py [--model resnet20] [--rounds 15]   (under a minute)

Every distinct conv / dense op of the model (``export.latency_model.extract_ops``, batch 1,
at the model's input size) is built as a one-op ONNX graph (``export.latency_table``, the
NCHW form the exported models have) and timed on ``ort-cpu-1t`` at fractions of its channels:
1, 0.75, 0.5 and 0.25 of every channel axis that pruning can narrow (axes of 16 channels
or more; the model's 1 input channel and 10 classes stay), rounded up to a multiple of 8 as
our pruning rounds, and at 1 channel (what the op costs when it computes almost nothing).
All ops and widths are measured side by side in interleaved rounds
(``export.runners.measure_interleaved``), medians.

The FLOPs of an op scale with the product of its narrowed axes (a 3x3 conv at half its input
and output channels has a quarter of the FLOPs), so ``time fraction / FLOPs fraction`` says
how much of a FLOPs cut the kernel turns into time; the whole-model rows sum the ops with
their multiplicities, as a uniformly pruned model would run them. That is issue 20's item 1
question: where this ratio stays far above 1, no choice of widths gives a speed-up of 0.9x
the FLOPs reduction on this runner, and the per-op floor (the 1-channel column) says why.

Writes benchmarks/results/width_latency_<model>.json, .md and .png.
"""
import argparse
import collections
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from export import machine  # noqa: E402  (export sets the XLA workarounds first)
import numpy as np  # noqa: E402

from export import latency_model, latency_table, runners  # noqa: E402
from models import zoo  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
FRACTIONS = (1.0, 0.75, 0.5, 0.25)
MULTIPLE = 8
MIN_PRUNABLE = 16


def narrowed(op, fraction: float):
    """``op``'s signature with every prunable channel axis at ``fraction`` (rounded up to a
    multiple of 8); ``fraction=0`` puts those axes at 1 channel."""
    values = {}
    for axis in latency_model.independent_channel_axes(op):
        full = int(op.sig.get(axis))
        if full < MIN_PRUNABLE:
            continue
        kept = 1 if fraction == 0 else min(full, MULTIPLE * -(-int(round(full * fraction))
                                                              // MULTIPLE))
        values[axis] = kept
    return latency_model.with_channels(op, values)


def distinct_ops(model_name: str):
    """``[(op, count)]``: the model's conv and dense ops, each signature once."""
    fn, variables, x = zoo.instantiate(model_name, tiny=False, batch=1)
    counts = collections.Counter()
    first = {}
    for op in latency_model.extract_ops(fn, variables, x):
        if op.sig.kind in ("conv", "dense"):
            counts[op.sig.key] += 1
            first.setdefault(op.sig.key, op)
    return [(first[key], n) for key, n in counts.items()]


def label(op) -> str:
    p = dict(op.sig.params)
    if op.sig.kind == "dense":
        return f"dense {p['k']}->{p['n']}"
    k, s = p["kernel"], p["strides"]
    return (f"conv {k[0]}x{k[1]}/{s[0]} {p['cin']}->{p['cout']} at {p['h']}x{p['w']}"
            + (" depthwise" if p["groups"] > 1 else ""))


def measure(ops, rounds: int, runs: int):
    runner = runners.get_runner("ort-cpu-1t")
    cells = []                                # (op index, fraction, signature, FLOPs fraction)
    for i, (op, _) in enumerate(ops):
        for fraction in FRACTIONS + (0.0,):
            sig = narrowed(op, fraction)
            cells.append((i, fraction, sig, op_flops(sig) / op_flops(op.sig)))
    models = [latency_table.ONNX_BUILDERS[sig.kind](sig) for _, _, sig, _ in cells]
    timed = runners.measure_interleaved(runner, models, batches=(1,), runs=runs, rounds=rounds)
    rows = []
    for i, (op, count) in enumerate(ops):
        row = {"op": label(op), "count": count, "signature": op.sig.key, "widths": {}}
        for (j, fraction, sig, flops_fraction), t in zip(cells, timed):
            if j == i:
                row["widths"][str(fraction)] = {"signature": sig.key, "flops": op_flops(sig),
                                                "flops_fraction": flops_fraction,
                                                "median_ms": t[1].median_ms}
        full = row["widths"]["1.0"]["median_ms"]
        for cell in row["widths"].values():
            cell["time_fraction"] = cell["median_ms"] / full
        rows.append(row)
    return rows


def whole_model(rows):
    """Sum over ops (with multiplicity) at each fraction: time and FLOPs fractions, and the
    speed-up / FLOPs-reduction ratio of a uniformly narrowed model as the sum of its ops."""
    out = {}
    for fraction in FRACTIONS:
        key = str(fraction)
        time_full = sum(r["count"] * r["widths"]["1.0"]["median_ms"] for r in rows)
        time = sum(r["count"] * r["widths"][key]["median_ms"] for r in rows)
        flops_full = sum(r["count"] * r["widths"]["1.0"]["flops"] for r in rows)
        flops = sum(r["count"] * r["widths"][key]["flops"] for r in rows)
        out[key] = {"time_fraction": time / time_full, "flops_fraction": flops / flops_full,
                    "speedup_over_flops_reduction": (time_full / time) / (flops_full / flops)}
    return out


def op_flops(sig) -> int:
    """FLOPs (2 per multiply-accumulate, as ``core.cost``) of a conv or dense signature."""
    if sig.kind == "dense":
        return 2 * sig.get("m") * sig.get("k") * sig.get("n")
    kernel, strides = sig.get("kernel"), sig.get("strides")
    out_hw = -(-sig.get("h") // strides[0]) * -(-sig.get("w") // strides[1])
    return 2 * out_hw * kernel[0] * kernel[1] * sig.get("cin") // sig.get("groups") \
        * sig.get("cout")


def markdown(result) -> str:
    info = result["machine"]
    lines = [f"# Conv latency against channel count: {result['model']} on ort-cpu-1t", "",
             f"Machine: {machine.line(info, 'onnxruntime')}, 1 thread, batch 1; medians of "
             f"{result['rounds']} interleaved rounds. Run: `python benchmarks/width_latency.py`.",
             "",
             "Each cell: microseconds (time fraction / FLOPs fraction of the full width). "
             "Prunable axes (16 channels or more) at the fraction, rounded up to multiples of "
             f"{MULTIPLE}; the last column puts them at 1 channel.", "",
             "| op | count | " + " | ".join(f"x{f}" for f in FRACTIONS) + " | 1 channel |",
             "|---|---|" + "---|" * (len(FRACTIONS) + 1)]
    for r in result["ops"]:
        cells = []
        for fraction in FRACTIONS:
            c = r["widths"][str(fraction)]
            cells.append(f"{1000 * c['median_ms']:.1f} ({c['time_fraction']:.2f} / "
                         f"{c['flops_fraction']:.2f})")
        floor = r["widths"]["0.0"]
        cells.append(f"{1000 * floor['median_ms']:.1f} ({floor['time_fraction']:.2f})")
        lines.append(f"| {r['op']} | {r['count']} | " + " | ".join(cells) + " |")
    lines += ["", "Whole model as the sum of its ops, every prunable axis narrowed alike:", "",
              "| fraction | FLOPs fraction | time fraction | speed-up / FLOPs reduction |",
              "|---|---|---|---|"]
    for key, w in result["whole_model"].items():
        lines.append(f"| x{key} | {w['flops_fraction']:.3f} | {w['time_fraction']:.3f} | "
                     f"{w['speedup_over_flops_reduction']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(result, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for r in result["ops"]:
        points = sorted((c["flops_fraction"], c["time_fraction"])
                        for k, c in r["widths"].items() if k != "0.0")
        ax.plot(*zip(*points), marker="o", label=f"{r['op']} (x{r['count']})")
    whole = sorted((w["flops_fraction"], w["time_fraction"])
                   for w in result["whole_model"].values())
    ax.plot(*zip(*whole), color="black", linewidth=3, label="whole model (sum)")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="time follows FLOPs")
    ax.set_xlabel("FLOPs fraction of the full width")
    ax.set_ylabel("time fraction (onnxruntime, 1 thread, batch 1)")
    ax.set_title(f"{result['model']}: time against FLOPs when channels are removed")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    info = machine.describe()
    ops = distinct_ops(args.model)
    rows = measure(ops, args.rounds, args.runs)
    result = {"model": args.model, "machine": info, "rounds": args.rounds, "runs": args.runs,
              "multiple": MULTIPLE, "ops": rows, "whole_model": whole_model(rows)}
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"width_latency_{args.model}")
    with open(base + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(markdown(result))
    plot(result, base + ".png")
    print(markdown(result))


if __name__ == "__main__":
    main()
