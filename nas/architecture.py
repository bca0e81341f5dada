"""Architectures of the search space made real: assembled from trained blocks with no further
training, evaluated on held-out data, exported to ONNX and measured on a device runner.

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

from core import cost as cost_lib
from data import pipeline
from nas.distill import Student
from nas.search_space import TEACHER, Architecture, SearchSpace
from nas.teacher_blocks import TeacherBlock


@dataclasses.dataclass
class BlockOption:
    fn: Callable                    # fn(variables, x) -> y, inference mode
    variables: Any
    choice: Any
    val_nsr: float = 0.0


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
                    row.append(BlockOption(s.fn, s.variables, choice, s.val_nsr))
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


def assemble(library: BlockLibrary, arch: Architecture) -> Tuple[Callable, List[Any]]:
    """``fn(variables, x)`` of the whole network for ``arch`` and its list of variables."""
    sequence = library.block_sequence(arch)
    fns = [o.fn for o in sequence]

    def fn(variables, x):
        for block_fn, v in zip(fns, variables):
            x = block_fn(v, x)
        return x
    return fn, [o.variables for o in sequence]


def _forward(library: BlockLibrary, arch: Architecture, x):
    position_of = {index: p for p, index in enumerate(library.space.positions)}
    for i, block in enumerate(library.blocks):
        p = position_of.get(i)
        if p is None:
            x = library._jitted_fixed(i)(block.variables, x)
        else:
            x = library._jitted(p, arch[p])(library.options[p][arch[p]].variables, x)
    return x


def evaluate(library: BlockLibrary, arch: Architecture, dataset, split: str = "validation",
             limit: int = 0, batch_size: int = 500) -> float:
    """Top-1 accuracy of the assembled architecture on a held-out split (first ``limit``)."""
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
                                                                        dataset.std)))
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


def export_and_measure(library: BlockLibrary, arch: Architecture, input_shape, runner,
                       path: Optional[str] = None, parity: bool = False) -> Dict[str, Any]:
    """Exports the assembled network to ONNX (batch 1) and measures it on ``runner``."""
    from export.onnx_export import to_onnx
    fn, variables = assemble(library, arch)
    x = np.random.default_rng(0).standard_normal((1,) + tuple(input_shape)).astype(np.float32)
    result = to_onnx(fn, variables, x, path=path, dynamic_batch=False, parity=parity)
    m = runner.measure(result.model, batch=1)
    out = {"latency_ms": m.median_ms, "latency_p90_ms": m.p90_ms,
           "peak_memory_bytes": m.peak_memory_bytes, "onnx_ops": sum(result.op_counts.values())}
    if result.parity is not None:
        out["parity_max_rel_error"] = float(result.parity.max_relative_error)
    return out


__all__ = ["BlockLibrary", "BlockOption", "assemble", "evaluate", "cost",
           "export_and_measure"]
