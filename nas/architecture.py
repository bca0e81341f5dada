"""Architectures of the search space made real: assembled from trained blocks with no further
training, evaluated on held-out data, exported (ONNX, or .tflite for LiteRT) and measured on a device runner:
all the architectures that get a latency are exported once and timed together in interleaved
rounds, twice (the second pass shuffled), so load drift hits them alike and the two passes
give a test-retest Kendall tau (``measure_latencies``, ``retest_tau``).

A ``BlockLibrary`` holds every block option of every position (the teacher's own block and
the distilled students) as ``fn(variables, x)`` plus variables, and the fixed teacher blocks
around the searched positions (stem, head). ``assemble`` chains one option per position into
a plain JAX function ``fn(variables, x)`` with ``variables`` a list of per-block variables:
it jits, differentiates (for a fine-tune) and exports like any model.

Evaluating hundreds of sampled architectures must not compile each one: ``evaluate`` calls
one jitted function per block (compiled once per (position, option)) in sequence, so a new
architecture costs only its forward passes.
"""
import dataclasses
import functools
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from core import cost as cost_lib
from data import pipeline
from export.runners import measure_interleaved
from nas.distill import Student
from nas.search_space import TEACHER, Architecture, SearchSpace
from nas.teacher_blocks import TeacherBlock


@dataclasses.dataclass
class BlockOption:
    fn: Callable                    # fn(variables, x) -> y, inference mode
    variables: Any
    choice: Any
    val_nsr: float = 0.0
    module: Any = None              # a student's Flax module (its training mode); None: teacher


class BlockLibrary:
    def __init__(self, blocks: Sequence[TeacherBlock], space: SearchSpace,
                 students: Dict[Tuple[int, Any], Student]):
        self.blocks, self.space = list(blocks), space
        self.options: List[List[BlockOption]] = []
        for p, index in enumerate(space.positions):
            row = []
            for choice in space.options[p]:
                if choice == TEACHER:
                    b = blocks[index]
                    row.append(BlockOption(b.fn, b.variables, TEACHER, 0.0))
                else:
                    s = students[(p, choice)]
                    row.append(BlockOption(s.fn, s.variables, choice, s.val_nsr, s.module))
            self.options.append(row)
        self.costs: Dict[Any, Tuple[int, int, int]] = {}

    def block_sequence(self, arch: Architecture) -> List[BlockOption]:
        """Every block of the network in order: fixed teacher blocks and the chosen options."""
        chosen = {index: self.options[p][arch[p]] for p, index in enumerate(self.space.positions)}
        out = []
        for i, b in enumerate(self.blocks):
            out.append(chosen.get(i) or BlockOption(b.fn, b.variables, TEACHER, 0.0))
        return out

    def per_block_nsr(self, arch: Architecture) -> np.ndarray:
        return np.array([self.options[p][i].val_nsr for p, i in enumerate(arch)])

    @functools.lru_cache(maxsize=None)
    def _jitted(self, position: int, option: int):
        return jax.jit(self.options[position][option].fn)

    @functools.lru_cache(maxsize=None)
    def _jitted_fixed(self, index: int):
        return jax.jit(self.blocks[index].fn)

    @functools.lru_cache(maxsize=None)
    def _jitted_train(self, position: int, option: int):
        """A student's training-mode forward: (output, updated batch statistics)."""
        module = self.options[position][option].module

        def run(variables, x):
            y, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
            return y, updates["batch_stats"]
        return jax.jit(run)


def assemble(library: BlockLibrary, arch: Architecture) -> Tuple[Callable, List[Any]]:
    """``fn(variables, x)`` of the whole network for ``arch`` and its list of variables."""
    sequence = library.block_sequence(arch)
    fns = [o.fn for o in sequence]

    def fn(variables, x):
        for block_fn, v in zip(fns, variables):
            x = block_fn(v, x)
        return x
    return fn, [o.variables for o in sequence]


def block_fns(library: BlockLibrary, arch: Architecture) -> List[Callable]:
    """Per block of the network (``block_sequence`` order), its jitted inference function,
    compiled once per (position, option) across architectures."""
    position_of = {index: p for p, index in enumerate(library.space.positions)}
    return [library._jitted_fixed(i) if position_of.get(i) is None
            else library._jitted(position_of[i], arch[position_of[i]])
            for i in range(len(library.blocks))]


def _forward(library: BlockLibrary, arch: Architecture, x, variables=None):
    variables = variables or [o.variables for o in library.block_sequence(arch)]
    for fn, v in zip(block_fns(library, arch), variables):
        x = fn(v, x)
    return x


def evaluate(library: BlockLibrary, arch: Architecture, dataset, split: str = "validation",
             limit: int = 0, batch_size: int = 500, variables=None) -> float:
    """Top-1 accuracy of the assembled architecture on a held-out split (first ``limit``);
    ``variables``: per block, in place of the library's (e.g. recalibrated statistics)."""
    x_all, y_all = getattr(dataset, split)
    if limit:
        x_all, y_all = x_all[:limit], y_all[:limit]
    correct = 0
    for start in range(0, len(x_all), batch_size):
        xb = x_all[start:start + batch_size]
        n = len(xb)
        if n < batch_size:          # pad so every call hits the compiled batch shape
            xb = np.concatenate([xb, np.zeros((batch_size - n,) + xb.shape[1:], xb.dtype)])
        logits = _forward(library, arch, jnp.asarray(pipeline.normalize(xb, dataset.mean,
                                                                        dataset.std)),
                          variables)
        correct += int(np.sum(np.argmax(np.asarray(logits)[:n], -1) == y_all[start:start + n]))
    return correct / len(x_all)


def _block_cost(fn, variables, in_shape) -> Tuple[int, int, int]:
    report = cost_lib.count(fn, variables, jnp.zeros((1,) + tuple(in_shape[1:]), jnp.float32))
    return report.flops, report.params, report.peak_activation_bytes


def cost(library: BlockLibrary, arch: Architecture) -> Dict[str, float]:
    """FLOPs, parameters and peak activation bytes (batch 1) of the assembled network, from
    the jaxprs of its blocks: FLOPs and parameters add up over blocks; between blocks only
    the one crossing activation is live, so the peak is the largest block peak."""
    totals = np.zeros(3, np.int64)
    peak = 0
    position_of = {index: p for p, index in enumerate(library.space.positions)}
    for i, block in enumerate(library.blocks):
        p = position_of.get(i)
        key = ("fixed", i) if p is None else (p, arch[p])
        if key not in library.costs:
            option = (BlockOption(block.fn, block.variables, TEACHER) if p is None
                      else library.options[p][arch[p]])
            library.costs[key] = _block_cost(option.fn, option.variables, block.in_shape)
        f, n, m = library.costs[key]
        totals += (f, n, 0)
        peak = max(peak, m)
    return {"flops": int(totals[0]), "params": int(totals[1]), "peak_activation_bytes": peak}


def export_model(library: BlockLibrary, arch: Architecture, input_shape,
                 path: Optional[str] = None, parity: bool = False, runner="onnx"
                 ) -> Tuple[Any, Dict[str, Any]]:
    """The assembled network at batch 1 in the format ``runner`` times (ONNX for
    onnxruntime, .tflite for LiteRT: ``export.for_runner``) and its op count (and parity
    error): each architecture is exported once, then timed with all the others in
    interleaved rounds (``measure_latencies``)."""
    from export.for_runner import export_for
    fn, variables = assemble(library, arch)
    x = np.random.default_rng(0).standard_normal((1,) + tuple(input_shape)).astype(np.float32)
    exported = export_for(runner, fn, variables, x, path=path, parity=parity)
    return exported.model, exported.fields()


LATENCY_PERCENTILE = 10     # the latency target is the p10 of the pooled samples


def latency_fields(samples_ms: Sequence[float]) -> Dict[str, float]:
    """Latency statistics of one model's samples. The target (``latency_ms``) is the 10th
    percentile: load on a shared machine only ever adds time, so the low tail is what the
    model costs, and p10 was the most stable statistic in the latency-model benchmark; the
    median and p90 are kept beside it."""
    samples = np.asarray(samples_ms, np.float64)
    p10 = float(np.percentile(samples, LATENCY_PERCENTILE))
    return {"latency_ms": p10, "latency_p10_ms": p10,
            "latency_median_ms": float(np.median(samples)),
            "latency_p90_ms": float(np.percentile(samples, 90)), "latency_runs": len(samples)}


def _interleaved_pass(runner, models: Sequence, order: Sequence[int], rounds: int,
                      runs: int) -> List[List[float]]:
    """One pass of ``rounds`` interleaved rounds over ``models`` taken in ``order``; the
    samples of every model, in the models' own order."""
    timed = measure_interleaved(runner, [models[i] for i in order], batches=(1,), runs=runs,
                                rounds=rounds)
    samples: List[List[float]] = [[] for _ in models]
    for i, per_batch in zip(order, timed):
        samples[i] = list(per_batch[1].samples_ms)
    return samples


def measure_latencies(runner, models: Sequence, rounds: int, runs: int,
                      seed: int = 0) -> List[Dict[str, Any]]:
    """Latency of every model, timed side by side: on a shared machine, models timed one
    after another see different loads and come out reordered, so all of them are timed in
    ``rounds`` interleaved rounds of ``runs`` runs each (``runners.measure_interleaved``).
    That is done twice, independently, the second pass in a shuffled order (``seed``): per
    model, ``latency_pass_p10_ms`` holds the two passes' p10 (the test-retest pair behind
    ``retest_tau``) and the ``latency_fields`` come from both passes' samples pooled."""
    order = list(range(len(models)))
    first = _interleaved_pass(runner, models, order, rounds, runs)
    shuffled = [int(i) for i in np.random.default_rng(seed).permutation(len(models))]
    second = _interleaved_pass(runner, models, shuffled, rounds, runs)
    return [{**latency_fields(a + b),
             "latency_pass_p10_ms": [float(np.percentile(a, LATENCY_PERCENTILE)),
                                     float(np.percentile(b, LATENCY_PERCENTILE))]}
            for a, b in zip(first, second)]


def retest_tau(rows: Sequence[Dict[str, Any]]) -> Optional[float]:
    """Kendall tau between the two passes' latencies over the rows that were timed (those
    with ``latency_pass_p10_ms``): how far a repeat of the measurement keeps their order.
    None with fewer than two timed rows or when a pass ranks all of them equal."""
    pairs = [r["latency_pass_p10_ms"] for r in rows if r.get("latency_pass_p10_ms")]
    if len(pairs) < 2:
        return None
    first, second = zip(*pairs)
    tau = float(stats.kendalltau(first, second)[0])
    return tau if np.isfinite(tau) else None


__all__ = ["BlockLibrary", "BlockOption", "assemble", "evaluate", "cost", "export_model",
           "latency_fields", "measure_latencies", "retest_tau"]
