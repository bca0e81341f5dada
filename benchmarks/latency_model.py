"""Does the table-based latency model predict whole-model latency of pruned networks?

Random per-layer widths of ResNet-20 and MobileNetV2 (28x28, batch 1) stand in for pruned
models: each variant is a natively narrower Flax model. Each is exported to ONNX and timed
whole on the device; the latency model predicts it from its jaxpr and the op tables (exact
signatures, and grid interpolation in channel counts). A linear calibration is fitted on a
few separate variants of both families (not the validation ones). Reported: fraction of
validation variants predicted within 10%, Kendall's tau (predicted vs measured), and for
comparison the tau of FLOPs.

  python benchmarks/latency_model.py                # ~10-15 min on 2 shared cores
  python benchmarks/latency_model.py --validate 5 --calibrate 2   # a smoke run

Writes benchmarks/results/latency_model.json and .md; op tables are cached in
benchmarks/results/latency_tables.json (delete it to re-measure).
"""
import argparse
import json
import os
import sys
import time
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

import export  # noqa: E402
from core import cost  # noqa: E402
from export import latency_model as lm  # noqa: E402
from export import machine  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


class WideResNet(nn.Module):
    """ResNet-20 layout (3 stages x 3 basic blocks) with a width per stage and per block."""
    stage_widths: Sequence[int]
    inner_widths: Sequence[int]          # conv1 width of each of the 9 blocks

    @nn.compact
    def __call__(self, x):
        bn = lambda: nn.BatchNorm(use_running_average=True)
        x = nn.relu(bn()(nn.Conv(self.stage_widths[0], (3, 3), use_bias=False)(x)))
        block = 0
        for stage, width in enumerate(self.stage_widths):
            for i in range(3):
                stride = 2 if stage > 0 and i == 0 else 1
                y = nn.Conv(self.inner_widths[block], (3, 3), stride, use_bias=False)(x)
                y = nn.Conv(width, (3, 3), use_bias=False)(nn.relu(bn()(y)))
                y = bn()(y)
                if stride != 1 or x.shape[-1] != width:
                    x = bn()(nn.Conv(width, (1, 1), stride, use_bias=False)(x))
                x = nn.relu(x + y)
                block += 1
        return nn.Dense(10)(x.mean(axis=(1, 2)))


MBV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 1), (6, 320, 1, 1))


class WideMobileNetV2(nn.Module):
    """MobileNetV2 at 28x28 with a width per stage and a hidden width per block."""
    stem: int
    stage_widths: Sequence[int]
    hidden_widths: Sequence[int]         # one per block (17)
    last: int

    @nn.compact
    def __call__(self, x):
        bn = lambda: nn.BatchNorm(use_running_average=True)
        x = nn.relu6(bn()(nn.Conv(self.stem, (3, 3), use_bias=False)(x)))
        block = 0
        for (t, _, n, s), width in zip(MBV2_STAGES, self.stage_widths):
            for i in range(n):
                stride = s if i == 0 else 1
                hidden = self.hidden_widths[block]
                y = x
                if t != 1:
                    y = nn.relu6(bn()(nn.Conv(hidden, (1, 1), use_bias=False)(y)))
                y = nn.Conv(y.shape[-1], (3, 3), stride, feature_group_count=y.shape[-1],
                            use_bias=False)(y)
                y = bn()(nn.Conv(width, (1, 1), use_bias=False)(nn.relu6(bn()(y))))
                x = x + y if stride == 1 and x.shape[-1] == width else y
                block += 1
        x = nn.relu6(bn()(nn.Conv(self.last, (1, 1), use_bias=False)(x)))
        return nn.Dense(10)(x.mean(axis=(1, 2)))


def random_resnet(rng):
    stages = [max(2, int(round(w * rng.uniform(0.3, 1.0)))) for w in (16, 32, 64)]
    inner = [max(2, int(round(stages[b // 3] * rng.uniform(0.25, 1.0)))) for b in range(9)]
    return WideResNet(tuple(stages), tuple(inner))


def random_mobilenetv2(rng):
    stem = max(4, int(round(32 * rng.uniform(0.3, 1.0))))
    widths = [max(4, int(round(c * rng.uniform(0.35, 1.0)))) for _, c, _, _ in MBV2_STAGES]
    hidden, cin = [], stem
    for (t, _, n, _), width in zip(MBV2_STAGES, widths):
        for i in range(n):
            hidden.append(cin if t == 1 else max(4, int(round(t * cin * rng.uniform(0.25, 1)))))
            cin = width
    last = max(16, int(round(1280 * rng.uniform(0.3, 1.0))))
    return WideMobileNetV2(stem, tuple(widths), tuple(hidden), last)


FAMILIES = {"resnet20": random_resnet, "mobilenetv2": random_mobilenetv2}
# The row of the differentiable budget: experiments/learned_pruning.py builds
# ``LatencyModel(table, mode="grid")``, whose statistic defaults to the median.
BUDGET_ROW = "grid/median"


def variant(family, seed):
    module = FAMILIES[family](np.random.default_rng(seed))
    x = jax.random.normal(jax.random.key(seed), (1, 28, 28, 1))
    variables = module.init(jax.random.key(seed), x)
    return (lambda v, x: module.apply(v, x)), variables, x


def measure_whole(runner, model, repeats=3):
    found = [runner.measure(model) for _ in range(repeats)]
    return (float(np.median([m.median_ms for m in found])),
            float(np.median([np.percentile(m.samples_ms, 10) for m in found])))




def stats(pred, meas):
    pred, meas = np.asarray(pred), np.asarray(meas)
    rel = np.abs(pred - meas) / meas
    return {"within_10pct": float(np.mean(rel <= 0.10)), "mean_abs_rel_error": float(rel.mean()),
            "max_abs_rel_error": float(rel.max()), "kendall_tau": float(kendalltau(pred, meas)[0]),
            "n": int(len(meas))}


def within_family_tau(values, measured, families) -> float:
    """Kendall's tau-a over the pairs of the same family only. Pooled over two families of
    different speeds, the pairs across families are ordered right by almost any predictor
    (900 of the 1,770 validation pairs here), which lifts the pooled tau."""
    values, measured = np.asarray(values), np.asarray(measured)
    score = pairs = 0
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            if families[i] == families[j]:
                pairs += 1
                score += np.sign(values[i] - values[j]) * np.sign(measured[i] - measured[j])
    return float(score / pairs) if pairs else float("nan")


def summarize(rows) -> dict:
    """Every table mode and statistic: a calibration fitted on the calibration variants and
    its errors and rank correlations on the validation variants, per family and pooled."""
    summary = {}
    calib = [r for r in rows if r["split"] == "calibrate"]
    valid = [r for r in rows if r["split"] == "validate"]
    for name in ("exact", "grid"):
        for stat, target, suffix in (("median", "measured_ms", ""),
                                     ("p10", "measured_p10_ms", "_p10")):
            key = f"features_{name}{suffix}"
            calibration = lm.Calibration.fit(np.array([r[key] for r in calib]),
                                             np.array([r[target] for r in calib]))
            entry = {"calibration": calibration.coef}
            for family in list(FAMILIES) + ["all"]:
                subset = [r for r in valid if family in ("all", r["family"])]
                pred = [calibration(np.array(r[key])) for r in subset]
                raw = [r[key][0] + r[key][1] for r in subset]
                meas = [r[target] for r in subset]
                labels = [r["family"] for r in subset]
                flops = [r["flops"] for r in subset]
                entry[family] = {**stats(pred, meas), "uncalibrated": stats(raw, meas),
                                 "flops_kendall_tau": float(kendalltau(flops, meas)[0]),
                                 "kendall_tau_within_families": within_family_tau(
                                     pred, meas, labels),
                                 "flops_kendall_tau_within_families": within_family_tau(
                                     flops, meas, labels)}
                for r, p in zip(subset, pred):
                    r[f"predicted_{name}{suffix}_ms"] = float(p)
            summary[f"{name}/{stat}"] = entry
    return summary


def write(results, args):
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(results, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(results, args))
    print(markdown(results, args))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="ort-cpu-1t")
    parser.add_argument("--validate", type=int, default=30)
    parser.add_argument("--calibrate", type=int, default=6)
    parser.add_argument("--out", default=os.path.join(RESULTS, "latency_model"))
    parser.add_argument("--resummarize", action="store_true",
                        help="recompute the summary and tables from the measurements in "
                             "--out.json (no model is measured again)")
    args = parser.parse_args()
    if args.resummarize:
        with open(args.out + ".json") as f:
            results = json.load(f)
        results["summary"] = summarize(results["rows"])
        write(results, args)
        return
    start = time.time()
    runner = export.get_runner(args.device, runs=60, warmup=10)
    table = export.LatencyTable(export.get_runner(args.device), os.path.join(
        RESULTS, "latency_tables.json"), runs=30, warmup=5, repeats=3)
    modes = {"exact": lm.LatencyModel(table, mode="exact"),
             "grid": lm.LatencyModel(table, mode="grid")}
    p10_modes = {"exact": lm.LatencyModel(table, mode="exact", statistic="p10_ms"),
                 "grid": lm.LatencyModel(table, mode="grid", statistic="p10_ms")}
    rows = []
    for family in FAMILIES:
        for index in range(args.calibrate + args.validate):
            split = "calibrate" if index < args.calibrate else "validate"
            seed = 1000 * (family == "mobilenetv2") + index
            fn, variables, x = variant(family, seed)
            ops = lm.extract_ops(fn, variables, x)
            onnx_model = export.to_onnx(fn, variables, x, parity=False).model
            median, p10 = measure_whole(runner, onnx_model)
            row = {"family": family, "seed": seed, "split": split, "measured_ms": median,
                   "measured_p10_ms": p10, "flops": cost.count(fn, variables, x).flops}
            for name, model in modes.items():
                row[f"features_{name}"] = model.features(ops).tolist()
                row[f"features_{name}_p10"] = p10_modes[name].features(ops).tolist()
            rows.append(row)
            print(f"{family} #{index} ({split}): measured {median:.3f} ms, "
                  f"raw exact sum {row['features_exact'][0] + row['features_exact'][1]:.3f} ms "
                  f"[{time.time() - start:.0f}s]", flush=True)
    results = {"device": args.device, "machine": machine.describe(), "rows": rows,
               "summary": summarize(rows), "seconds": time.time() - start}
    write(results, args)


def markdown(results, args):
    m = results["machine"]
    lines = [f"# Latency model validation ({results['device']})", "",
             f"Machine: {machine.line(m)}. "
             f"{args.calibrate} calibration + {args.validate} validation variants per family, "
             "random per-layer widths, 28x28, batch 1. Run: `python benchmarks/latency_model.py`"
             f" ({results['seconds'] / 60:.1f} min).", "",
             f"The differentiable latency budget of the learned gates (``gates.target='latency'``"
             f", experiments/learned_pruning.py) uses **{BUDGET_ROW}**. The `all` rows pool both "
             "families; pairs across families are nearly always ordered right, so `tau within "
             "families` counts only pairs of the same family (tau-a).", "",
             "| table mode / statistic | family | within 10% | Kendall tau | tau within families "
             "| mean abs rel err | uncalibrated within 10% | uncalibrated tau | FLOPs tau "
             "| FLOPs tau within families |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, entry in results["summary"].items():
        for family in list(FAMILIES) + ["all"]:
            e = entry[family]
            lines.append(f"| {key} | {family} | {e['within_10pct']:.0%} | {e['kendall_tau']:.3f} |"
                         f" {e['kendall_tau_within_families']:.3f} |"
                         f" {e['mean_abs_rel_error']:.1%} | {e['uncalibrated']['within_10pct']:.0%}"
                         f" | {e['uncalibrated']['kendall_tau']:.3f} | "
                         f"{e['flops_kendall_tau']:.3f} | "
                         f"{e['flops_kendall_tau_within_families']:.3f} |")
    lines += ["", "Calibration `c0 + c1*sum(linear ops) + c2*sum(other ops) + c3*n_ops` (ms):",
              ""]
    for key, entry in results["summary"].items():
        lines.append(f"- {key}: " + ", ".join(f"{c:.4g}" for c in entry["calibration"]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
