"""Weighted block pruning: the family of a model against channel pruning at equal latency.

Runs the ``blocks_<model>`` experiment (``experiments/block_family.py``: blocks scored on the
device, removed greedily, each member fine-tuned by distillation, exported and measured),
then measures every family member and every channel-pruned model of the same teacher found
in ``benchmarks/results/prune_*.json`` side by side in this process, on the same runner,
in interleaved rounds (medians of the round medians), and compares accuracy at equal
latency by interpolating the family's accuracy/latency curve.

  python benchmarks/block_pruning.py --model=resnet20                # ~1 h on 2 cores
  python benchmarks/block_pruning.py --model=resnet20 --reuse        # re-measure and re-plot
  python benchmarks/block_pruning.py --model=resnet20 --set family.members=4 --set finetune.steps=100
  python benchmarks/block_pruning.py --smoke                         # tiny teacher, minutes

Writes benchmarks/results/block_pruning_<model>.json, .md and .png (accuracy against
measured latency at batch 1 and 32; the channel-pruned models on the same axes).
"""
import argparse
import glob
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from export import machine  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(model: str, smoke: bool, overrides):
    from core import config as config_lib
    from experiments import registry
    config = registry.load("blocks_tiny" if smoke else f"blocks_{model}")
    if smoke:
        config.teacher.model = model
    for item in overrides:
        key, value = item.split("=", 1)
        config_lib.apply_override(config, key, value)
    return config


def channel_pruned(teacher_key: str, pattern: str):
    """Channel-pruned models of the same teacher: ``(name, onnx, test accuracy, flops)``."""
    found = []
    for path in sorted(glob.glob(pattern)):
        with open(path) as f:
            result = json.load(f)
        after = result.get("after", {})
        if result.get("teacher") != teacher_key or not os.path.exists(after.get("onnx", "")):
            continue
        found.append({"name": result.get("experiment", os.path.basename(path)),
                      "kind": "channel pruning", "onnx": after["onnx"],
                      "accuracy": result["accuracy_after_finetune"], "flops": after["flops"],
                      "source": os.path.relpath(path, ROOT)})
    return found


def measure_side_by_side(entries, device: str, runs: int, rounds: int, batches=(1, 32)):
    """Median latency of every entry, measured in interleaved rounds on one runner."""
    from export.runners import get_runner, measure_interleaved
    measured = measure_interleaved(get_runner(device), [e["onnx"] for e in entries], batches,
                                   runs, rounds)
    for entry, per_batch in zip(entries, measured):
        for b, m in per_batch.items():
            entry[f"batch{b}_ms"] = m.median_ms


def at_equal_latency(family, others, batch: int):
    """Family accuracy interpolated at each other model's latency (None outside the curve)."""
    key = f"batch{batch}_ms"
    points = sorted((m[key], m["accuracy"]) for m in family)
    xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    rows = []
    for other in others:
        t = other[key]
        inside = xs[0] <= t <= xs[-1]
        nearest = min(family, key=lambda m: abs(m[key] - t))
        rows.append({"model": other["name"], "batch": batch, "latency_ms": t,
                     "accuracy": other["accuracy"],
                     "family_accuracy_interpolated": float(np.interp(t, xs, ys)) if inside
                     else None,
                     "nearest_member": nearest["name"], "nearest_member_ms": nearest[key],
                     "nearest_member_accuracy": nearest["accuracy"]})
    return rows


def plot(family, others, path: str, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, batch in zip(axes, (1, 32)):
        key = f"batch{batch}_ms"
        xs = [m[key] for m in family]
        ax.plot(xs, [m["accuracy"] * 100 for m in family], "o-", label="block family (+KD)")
        ax.plot(xs, [m["accuracy_before_finetune"] * 100 for m in family], "o--", alpha=0.5,
                label="block family (no fine-tune)")
        for m in family:
            ax.annotate(str(m["blocks_removed"]), (m[key], m["accuracy"] * 100),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
        for other in others:
            ax.plot([other[key]], [other["accuracy"] * 100], "*", markersize=12,
                    label=other["name"])
        ax.set_xlabel(f"measured latency, batch {batch} (ms)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(result) -> str:
    m = result["machine"]
    lines = [f"# Block pruning: {result['model']} on {result['device']}", "",
             f"Machine: {machine.line(m, 'jax', 'onnxruntime')}. Trade-off weight "
             f"{result['settings']['weight']}, re-scoring {result['settings']['rescore']}, "
             f"{result['finetune_steps']} KD fine-tune steps per member, block latency "
             f"{result['latency_source']}. Latencies: medians of {result['rounds']} interleaved "
             f"rounds of {result['runs']} runs, one process.", "",
             "| blocks removed | last removed | test acc | acc after KD | FLOPs (M) | "
             "params (k) | b1 (ms) | b32 (ms) |", "|---|---|---|---|---|---|---|---|"]
    for r in result["family"]:
        lines.append(f"| {r['blocks_removed']} | {r['last_removed'] or '-'} | "
                     f"{r['accuracy_before_finetune'] * 100:.2f} | {r['accuracy'] * 100:.2f} | "
                     f"{r['flops'] / 1e6:.2f} | {r['params'] / 1e3:.1f} | "
                     f"{r['batch1_ms']:.3f} | {r['batch32_ms']:.2f} |")
    if result["channel_pruned"]:
        lines += ["", "Channel-pruned models of the same teacher, measured in the same rounds:",
                  "", "| model | test acc | FLOPs (M) | b1 (ms) | b32 (ms) |", "|---|---|---|---|---|"]
        for c in result["channel_pruned"]:
            lines.append(f"| {c['name']} | {c['accuracy'] * 100:.2f} | {c['flops'] / 1e6:.2f} | "
                         f"{c['batch1_ms']:.3f} | {c['batch32_ms']:.2f} |")
        lines += ["", "At equal latency (family accuracy interpolated at the channel-pruned "
                  "model's latency; '-' where outside the family's range):", "",
                  "| model | batch | latency (ms) | its acc | block family acc | nearest member |",
                  "|---|---|---|---|---|---|"]
        for c in result["equal_latency"]:
            interp = c["family_accuracy_interpolated"]
            lines.append(f"| {c['model']} | {c['batch']} | {c['latency_ms']:.3f} | "
                         f"{c['accuracy'] * 100:.2f} | "
                         f"{'-' if interp is None else f'{interp * 100:.2f}'} | "
                         f"{c['nearest_member']} ({c['nearest_member_ms']:.3f} ms, "
                         f"{c['nearest_member_accuracy'] * 100:.2f}) |")
    lines += ["", f"![accuracy vs latency]({os.path.basename(result['plot'])})", "",
              f"Wall time {result['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20", choices=["resnet20", "mobilenetv2", "vit"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. family.members=4")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--reuse", action="store_true",
                        help="use the family of a finished run in --workdir")
    parser.add_argument("--smoke", action="store_true", help="tiny teacher (blocks_tiny)")
    parser.add_argument("--channel-results", default=os.path.join(RESULTS, "prune_*.json"))
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None, help="output prefix (default in results/)")
    args = parser.parse_args(argv)
    start = time.time()
    config = load_config(args.model, args.smoke, args.set)
    name = args.model + ("_smoke" if args.smoke else "")
    workdir = os.path.abspath(args.workdir or os.path.join(ROOT, "runs", f"blocks_{name}"))
    os.makedirs(workdir, exist_ok=True)
    info = machine.describe("flax", "jax2onnx")
    if args.reuse:
        with open(os.path.join(workdir, "result.json")) as f:
            run = json.load(f)
    else:
        from experiments import block_family
        run = block_family.main(config, workdir)

    family = [{**r, "name": f"blocks -{r['blocks_removed']}", "accuracy":
               r["accuracy_after_finetune"]} for r in run["family"]]
    others = channel_pruned(run["teacher"], args.channel_results)
    measure_side_by_side(family + others, config.device, args.runs, args.rounds)
    out = args.out or os.path.join(RESULTS, f"block_pruning_{name}")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    result = {key: run[key] for key in ("model", "teacher", "device", "settings",
                                        "finetune_steps", "latency_source", "blocks",
                                        "rejected")}
    result.update({
        "machine": info, "runs": args.runs, "rounds": args.rounds,
        "family": [{k: v for k, v in m.items() if k not in ("removed_params",)}
                   for m in family],
        "channel_pruned": others,
        "equal_latency": [row for b in (1, 32) for row in at_equal_latency(family, others, b)],
        "plot": out + ".png", "family_wall_seconds": run["wall_seconds"]})
    plot(family, others, out + ".png",
         f"{run['model']}: block family vs channel pruning ({run['device']})")
    result["seconds"] = time.time() - start
    with open(out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    text = markdown(result)
    with open(out + ".md", "w") as f:
        f.write(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
