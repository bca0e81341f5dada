"""Every zoo model (full config): FLOPs, params, JAX and ONNX latency, export parity error, and
the ONNX clean-up (``export.graph_passes``) before and after its move to library passes.

Shows that each model leaves as ONNX that reproduces it, what the export costs or gains in
speed, and that the current clean-up is as fast as the hand-written one it replaced. Each
model is exported once by jax2onnx without clean-up; "before" is ``export/graph_passes.py``
as of ``--before-rev`` (read with ``git show``, so the old passes need not stay in the tree),
"after" the current module. Both clean the same raw graph, both are checked against JAX
(parity at batch 2 and 3), and both are timed in interleaved rounds on the same runner, every
other round in reverse order, so load drift on a shared machine hits them alike. "same graph"
says the two cleaned graphs are equal up to value names: there the ratio is pure noise, and
shows how much to trust the others.
For the models named by ``--ablate`` each of our own passes is also left out once
(``optimize(skip=[...])``): what each is worth, or that the model does not run without it.
JAX runs jitted on the CPU (XLA uses all cores); latency is the median at batch 1 and 32.

  python benchmarks/export_latency.py --device ort-cpu-1t \
      --ablate resnet20,mobilenetv2,mobilenetv3,inception,transformer_lm   # ~45 min, 2 cores
  python benchmarks/export_latency.py --models resnet20,mobilenetv2 --rounds 5

Writes benchmarks/results/export_latency.json and .md (``--out`` to change).
"""
import argparse
import copy
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import export  # noqa: E402
from core import cost  # noqa: E402
from export import graph_passes  # noqa: E402
from export.parity import batch_variant, compare  # noqa: E402
from export.runners import summarize  # noqa: E402
from models import zoo  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
BATCHES = (1, 32)
# The last export/graph_passes.py whose passes were all hand-written (constant folding,
# transpose composition, Transpose->Reshape included).
HAND_WRITTEN_REV = "68be138"


def load_passes(rev: str):
    """export/graph_passes.py as of git revision ``rev``, as a module of its own."""
    source = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:export/graph_passes.py"],
                            check=True, capture_output=True, text=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(f"graph_passes_{rev}", f.name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    os.unlink(f.name)
    return module


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


def clean_variants(raw, before, ablate):
    """name -> (cleaned model or None, seconds or error); ablations that leave the graph as
    "after" leaves it are dropped (nothing to measure)."""
    steps = {"before": before.optimize, "after": graph_passes.optimize}
    if ablate:
        steps.update({f"after-{name}": (lambda m, n=name: graph_passes.optimize(m, skip=[n]))
                      for name in graph_passes.OUR_PASSES})
    out = {}
    for name, step in steps.items():
        start = time.perf_counter()
        try:
            out[name] = (step(copy.deepcopy(raw)), time.perf_counter() - start)
        except Exception as error:   # a pass that breaks a model is a result
            out[name] = (None, f"{type(error).__name__}: {str(error)[:120]}")
    after = out["after"][0].SerializeToString() if out["after"][0] is not None else None
    return {k: v for k, v in out.items() if k in ("before", "after") or
            v[0] is None or v[0].SerializeToString() != after}


def _parity(model, fn, variables, x):
    try:
        return compare(model, fn, variables, [x], batches=[3]).max_relative_error
    except Exception as error:       # onnxruntime cannot load or run it
        return f"{type(error).__name__}: ...{str(error)[-110:]}"


def benchmark_model(name, runner, before, args):
    fn, variables, x = zoo.instantiate(name, tiny=False, batch=2)
    report = cost.count(fn, variables, x[:1])
    raw = export.to_onnx(fn, variables, x, optimize=False, parity=False)
    row = {"model": name, "flops_batch1": int(report.flops), "params": int(report.params),
           "raw_nodes": sum(raw.op_counts.values()), "variants": {}}
    runnable = {}
    ablate = name in args.ablate.split(",")
    for key, (model, seconds) in clean_variants(raw.model, before, ablate).items():
        if model is None:
            row["variants"][key] = {"error": seconds}
            continue
        counts = graph_passes.count_ops(model)
        parity = _parity(model, fn, variables, x)
        row["variants"][key] = {"pass_seconds": seconds, "nodes": sum(counts.values()),
                                "transposes": counts.get("Transpose", 0), "parity": parity}
        if isinstance(parity, float):
            runnable[key] = model
    if "before" in runnable and "after" in runnable:
        row["same_graph"] = structure(runnable["before"]) == structure(runnable["after"])
    feeds = {b: dict(zip(raw.input_names, batch_variant([x], b))) for b in BATCHES}
    for batch in BATCHES:
        row[f"jax_ms_b{batch}"] = time_jax(fn, variables, list(feeds[batch].values()))
    measured = _interleaved(runner, list(runnable.values()), feeds, args.rounds)
    for key, per_batch in zip(runnable, measured):
        row["variants"][key].update({f"onnx_ms_b{b}": m.median_ms for b, m in per_batch.items()})
        row["variants"][key].update({f"onnx_p90_ms_b{b}": m.p90_ms for b, m in per_batch.items()})
    return row


def _interleaved(runner, models, feeds, rounds):
    """Per model and batch one Measurement over the samples of all rounds; each round times
    every model, in reverse order every other round, so neither drift nor position in the
    round favours one. Inputs are the model's own (random ints would index out of range)."""
    samples = [{b: [] for b in BATCHES} for _ in models]
    order = list(range(len(models)))
    for r in range(rounds):
        for i in order if r % 2 == 0 else order[::-1]:
            for b in BATCHES:
                samples[i][b] += runner.measure(models[i], inputs=feeds[b]).samples_ms
    return [{b: summarize(runner.name, s[b]) for b in BATCHES} for s in samples]


def structure(model):
    """The graph up to value names: per node its op, attributes and where each input comes
    from (a node's output, a graph input, or an initializer's dtype, shape and bytes)."""
    source = {i.name: ("input", k) for k, i in enumerate(model.graph.input)}
    for init in model.graph.initializer:
        value = numpy_helper.to_array(init)
        source[init.name] = ("const", str(value.dtype), value.shape,
                             hashlib.sha1(value.tobytes()).hexdigest())
    nodes = []
    for k, node in enumerate(model.graph.node):
        attrs = sorted((a.name, a.SerializeToString()) for a in node.attribute)
        nodes.append((node.op_type, node.domain, tuple(attrs),
                      tuple(source.get(name, name) for name in node.input)))
        source.update({out: ("node", k, j) for j, out in enumerate(node.output)})
    return nodes, [source.get(o.name) for o in model.graph.output]


def _ms(variant, batch):
    value = variant.get(f"onnx_ms_b{batch}")
    return f"{value:.2f}" if value is not None else "-"


def _ratio(variant, base, batch):
    a, b = variant.get(f"onnx_ms_b{batch}"), base.get(f"onnx_ms_b{batch}")
    return f"{a / b:.2f}" if a is not None and b else "-"


def markdown(rows, device, seconds, rounds, before_rev=HAND_WRITTEN_REV):
    lines = [f"# Zoo export: ONNX clean-up before/after, JAX jit vs onnxruntime `{device}`", "",
             f"Full configs; median latency in ms over {rounds} interleaved rounds; ratio = "
             f"after / before (below 1 is faster). Run: `python benchmarks/export_latency.py"
             f"` ({seconds / 60:.1f} min on 2 shared, loaded cores: where the graph is the "
             f"same, the ratio is noise alone). before = export/graph_passes.py at "
             f"{before_rev} (all hand-written), after = the current one.", "",
             "| model | MFLOPs (b=1) | params | JAX b1 | before b1 | after b1 | ratio b1 | JAX b32 "
             "| before b32 | after b32 | ratio b32 | nodes before/after | Transposes "
             "before/after | same graph | parity after | pass s before/after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error'][:80]} |" + " |" * 14)
            continue
        b, a = r["variants"]["before"], r["variants"]["after"]
        if "error" in a or "error" in b:
            lines.append(f"| {r['model']} | before: {b.get('error', 'ok')}; after: "
                         f"{a.get('error', 'ok')} |" + " |" * 14)
            continue
        parity = a["parity"] if isinstance(a["parity"], str) else f"{a['parity']:.1e}"
        lines.append(
            f"| {r['model']} | {r['flops_batch1'] / 1e6:.1f} | {r['params']:,} | "
            f"{r['jax_ms_b1']:.2f} | {_ms(b, 1)} | {_ms(a, 1)} | {_ratio(a, b, 1)} | "
            f"{r['jax_ms_b32']:.1f} | {_ms(b, 32)} | {_ms(a, 32)} | {_ratio(a, b, 32)} | "
            f"{b['nodes']}/{a['nodes']} | {b['transposes']}/{a['transposes']} | "
            f"{'yes' if r.get('same_graph') else 'no'} | {parity} | "
            f"{b['pass_seconds']:.1f}/{a['pass_seconds']:.1f} |")
    lines += _ablation_lines(rows)
    return "\n".join(lines) + "\n"


def _ablation_lines(rows):
    """One line per model and pass left out whose graph differs from "after"."""
    out = []
    for r in rows:
        for key, v in r.get("variants", {}).items():
            if not key.startswith("after-"):
                continue
            a = r["variants"]["after"]
            if "error" in v or isinstance(v.get("parity"), str):
                what = v.get("error") or v["parity"]
                out.append(f"| {r['model']} | {key[6:]} | does not run: ...{what[-60:]} | | |")
            else:
                out.append(f"| {r['model']} | {key[6:]} | {_ratio(v, a, 1)} | "
                           f"{_ratio(v, a, 32)} | {a['nodes']}->{v['nodes']} |")
    if not out:
        return []
    return ["", "## Each of our passes left out (ratio = without / with; above 1: it helps)",
            "", "| model | pass left out | ratio b1 | ratio b32 | nodes with->without |",
            "|---|---|---|---|---|"] + out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="ort-cpu-2t")
    parser.add_argument("--models", default=",".join(zoo.ZOO))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--before-rev", default=HAND_WRITTEN_REV)
    parser.add_argument("--ablate", default="", help="models (comma-separated) on which each "
                        "of our passes is also left out once")
    parser.add_argument("--out", default=os.path.join(RESULTS, "export_latency"))
    args = parser.parse_args()
    runner = export.get_runner(args.device, runs=20, warmup=5, min_time_s=0.3)
    before = load_passes(args.before_rev)
    start, rows = time.time(), []
    for name in args.models.split(","):
        try:
            rows.append(benchmark_model(name, runner, before, args))
        except Exception as error:  # a failing model is a result, not the end of the table
            rows.append({"model": name, "error": f"{type(error).__name__}: {error}"})
        print(json.dumps(rows[-1]), flush=True)
    seconds = time.time() - start
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"device": args.device, "rounds": args.rounds, "before_rev": args.before_rev,
                   "rows": rows, "seconds": seconds}, f, indent=1)
    text = markdown(rows, args.device, seconds, args.rounds, args.before_rev)
    with open(args.out + ".md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
