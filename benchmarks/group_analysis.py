"""How fast is channel-group analysis from the jaxpr, next to Torch-Pruning's DependencyGraph?

Run:  python benchmarks/group_analysis.py [--runs 7]     (about 2-4 minutes on 2 cores)
Needs: pip install -r benchmarks/requirements.txt  (torch, torchvision, torch-pruning).

Both tools answer the same question ("which channels must be removed together") for
ResNet-50 and ViT-B/16 at 224x224 with random weights, side by side in one process, one
thread each, the two tools timed in turn in every round (interleaved), median of the rounds.
The headline is end to end (our trace + analysis against Torch-Pruning's build + groups),
as the median of the rounds and for the first round alone (cold caches):

- ours: ``core.trace.trace`` (``jax.make_jaxpr``; reported separately) and
  ``core.channel_groups.analyze_traced`` (the rule-table interpreter and union-find);
- Torch-Pruning: ``DependencyGraph().build_dependency(model, example_inputs)`` followed by
  ``list(get_all_groups())`` on torchvision's ``resnet50`` and ``vit_b_16``. Its tracing is
  inside ``build_dependency`` and cannot be separated, so its time includes it.

Writes benchmarks/results/group_analysis.json and benchmarks/results/group_analysis.md.
"""
import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from core.channel_groups import analyze_traced  # noqa: E402
from core.trace import count_eqns, trace  # noqa: E402
from models.resnet import BottleneckBlock  # noqa: E402
from models.vit import ViT  # noqa: E402
from export import machine  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")


class ResNet50(nn.Module):
    """ImageNet ResNet-50 (v1.5, stride on the 3x3 as torchvision): 7x7/2 stem, max pool,
    bottleneck stages (3, 4, 6, 3) of widths 64-512, expansion 4, mean pool, dense."""
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(64, (7, 7), 2, padding=3, use_bias=False, name="stem")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="stem_bn")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
            for i in range(blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                x = BottleneckBlock(width, stride, name=f"stage{stage}_block{i}")(x, train)
        return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


def vit_b16() -> ViT:
    """ViT-B/16: 16x16 patches, width 768, 12 blocks of 12 heads, MLP 3072, linen attention."""
    return ViT(num_classes=1000, patch=16, dim=768, depth=12, num_heads=12, mlp_dim=3072)


def jax_model(module):
    """``(fn, random variables, image)`` at 224x224; weights drawn with numpy (no XLA init)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 224, 224, 3)), jnp.float32)
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)
    variables = jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.normal(scale=0.02, size=s.shape), s.dtype), shapes)
    return (lambda v, inp: module.apply(v, inp, train=False)), variables, x


def ours_steps(module):
    """Our two steps on ``module`` as zero-argument callables: trace, then analyse the last
    trace (a fresh Python function per trace: JAX caches traces by function identity)."""
    fn, variables, x = jax_model(module)
    last = {}

    def trace_step():
        last["traced"] = trace(lambda v, inp: fn(v, inp), variables, x)
        return last["traced"]

    return trace_step, lambda: analyze_traced(last["traced"])


def torch_pruning_step(name):
    """Torch-Pruning's whole answer (its tracing is inside ``build_dependency``)."""
    import torch
    import torch_pruning as tp
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    example = torch.randn(1, 3, 224, 224)
    return lambda: list(tp.DependencyGraph().build_dependency(
        model, example_inputs=example).get_all_groups())


def interleaved(steps, runs):
    """``{name: (seconds of each run, last result)}``, the steps timed in turn in every
    round, so load changes on this shared machine reach both tools alike."""
    times, results = {name: [] for name in steps}, {}
    for _ in range(runs):
        for name, step in steps.items():
            start = time.perf_counter()
            results[name] = step()
            times[name].append(time.perf_counter() - start)
    return {name: (times[name], results[name]) for name in steps}


def compare(module, torch_name, runs):
    trace_step, analysis_step = ours_steps(module)
    timed = interleaved({"trace": trace_step, "analysis": analysis_step,
                         "torch_pruning": torch_pruning_step(torch_name)}, runs)
    median = {name: statistics.median(t) for name, (t, _) in timed.items()}
    traced, analysis = timed["trace"][1], timed["analysis"][1]
    ours = {"trace_s": median["trace"], "analysis_s": median["analysis"],
            "trace_runs": timed["trace"][0], "analysis_runs": timed["analysis"][0],
            "equations": count_eqns(traced.jaxpr), "groups": len(analysis.groups),
            "prunable_groups": len(analysis.prunable()),
            "unsupported": sorted(analysis.unsupported)}
    theirs = {"build_and_groups_s": median["torch_pruning"],
              "runs": timed["torch_pruning"][0], "groups": len(timed["torch_pruning"][1])}
    return ours, theirs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    info = machine.describe("torch", "torch-pruning")
    rows = []
    for label, module, torch_name in (("ResNet-50", ResNet50(), "resnet50"),
                                      ("ViT-B/16", vit_b16(), "vit_b_16")):
        ours, theirs = compare(module, torch_name, args.runs)
        ratio = theirs["build_and_groups_s"] / ours["analysis_s"]
        rows.append({"model": label, "ours": ours, "torch_pruning": theirs,
                     "speedup_analysis": ratio,
                     "speedup_trace_plus_analysis":
                         theirs["build_and_groups_s"] / (ours["trace_s"] + ours["analysis_s"]),
                     "first_call": first_call(ours, theirs)})
        print(f"{label}: ours trace {ours['trace_s']:.3f}s + analysis {ours['analysis_s']:.3f}s "
              f"({ours['prunable_groups']} prunable / {ours['groups']} groups, "
              f"{ours['equations']} equations); Torch-Pruning {theirs['build_and_groups_s']:.3f}s "
              f"({theirs['groups']} groups); analysis {ratio:.1f}x faster", flush=True)
    info["load_average_at_end"] = os.getloadavg()
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "group_analysis.json"), "w") as f:
        json.dump({"machine": info, "runs": args.runs, "results": rows}, f, indent=2)
    with open(os.path.join(RESULTS, "group_analysis.md"), "w") as f:
        f.write(markdown(info, args.runs, rows))


def first_call(ours, theirs):
    """Round 1 alone, end to end: each tool's first answer in this process (its caches cold
    for this model; JAX's trace caches and Torch's dispatch warm up in later rounds)."""
    ours_s = ours["trace_runs"][0] + ours["analysis_runs"][0]
    theirs_s = theirs["runs"][0]
    return {"ours_s": ours_s, "torch_pruning_s": theirs_s, "speedup": theirs_s / ours_s}


def markdown(info, runs, rows):
    lines = [
        "# Channel-group analysis: jaxpr rule table vs Torch-Pruning DependencyGraph", "",
        f"Machine: {machine.line(info, 'python', 'jax', 'torch', 'torch-pruning')}; torch "
        f"on 1 thread. Median of {runs} interleaved rounds, "
        "224x224, random weights.", "",
        "| model | ours: trace (s) | ours: analysis (s) | Torch-Pruning build + groups (s) "
        "| speed-up end to end (trace + analysis) | speed-up (analysis alone) "
        "| first call end to end: ours / Torch-Pruning (s) "
        "| ours: groups (prunable) | Torch-Pruning: groups |",
        "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, t, first = r["ours"], r["torch_pruning"], r["first_call"]
        lines.append(
            f"| {r['model']} | {o['trace_s']:.3f} | {o['analysis_s']:.3f} | "
            f"{t['build_and_groups_s']:.3f} | {r['speedup_trace_plus_analysis']:.1f}x | "
            f"{r['speedup_analysis']:.1f}x | {first['ours_s']:.3f} / "
            f"{first['torch_pruning_s']:.3f} ({first['speedup']:.1f}x) "
            f"| {o['groups']} ({o['prunable_groups']}) "
            f"| {t['groups']} |")
    lines += ["", "Group counts differ by definition: ours lists every set of channels that "
              "must go together, including attention heads and head_dim separately and the "
              "non-prunable groups (model input and output), one group per residual stream; "
              "Torch-Pruning lists one group per prunable root layer.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
