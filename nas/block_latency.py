"""Latency from the device, per block: every block option of the space timed alone on the
target runner, summed per architecture and calibrated on whole architectures.

Why: the learned latency predictors (GNN, one-hot MLP) learn from a few dozen whole
architectures and rank them at Kendall tau 0.5-0.6; the search's latency constraint should
come from the device itself. Here each unique block (every option at every searched
position, and the fixed teacher blocks around them) is exported alone at its input shape
and all of them are timed together in interleaved rounds, twice
(``nas.architecture.measure_latencies``). An architecture's latency is then predicted as
``a * (sum of its blocks' latencies) + b``, ``a`` and ``b`` fitted on measured whole
architectures (``predictors.LinearOnFeatures`` on the one feature ``summed``): the fit absorbs
what separately timed blocks miss (session overhead per model, cache effects between blocks).
The prediction is judged with the other predictors over random splits.
"""
import dataclasses
from typing import Dict, List, Tuple

import jax.numpy as jnp
import numpy as np

from nas import architecture, predictors
from nas.architecture import BlockLibrary
from nas.search_space import Architecture


@dataclasses.dataclass
class BlockTable:
    """Measured latency (ms, p10 of interleaved samples) of every fixed block (by block
    index) and every option (by position and option index); ``retest_tau``: Kendall tau
    between the two passes over all blocks."""
    fixed_ms: Dict[int, float]
    option_ms: Dict[Tuple[int, int], float]
    retest_tau: float = float("nan")

    def summed(self, arch: Architecture) -> float:
        return (sum(self.fixed_ms.values())
                + sum(self.option_ms[(p, int(k))] for p, k in enumerate(arch)))

    def features(self, arch: Architecture) -> List[float]:
        return [self.summed(arch)]

    def as_dict(self) -> dict:
        return {"fixed_ms": {str(i): v for i, v in self.fixed_ms.items()},
                "option_ms": {f"{p}:{k}": v for (p, k), v in self.option_ms.items()},
                "retest_tau": self.retest_tau}

    @classmethod
    def from_dict(cls, d: dict) -> "BlockTable":
        options = {tuple(int(v) for v in key.split(":")): ms for key, ms in d["option_ms"].items()}
        return cls({int(i): ms for i, ms in d["fixed_ms"].items()}, options,
                   d.get("retest_tau", float("nan")))


def block_models(library: BlockLibrary, runner="onnx"):
    """``[(key, model)]``: ('fixed', index) for the blocks outside the searched positions,
    (position, option) for every option, each exported alone at batch 1 in the format
    ``runner`` times (``export.for_runner``)."""
    from export.for_runner import export_for
    positions = {index: p for p, index in enumerate(library.space.positions)}
    out = []
    for i, block in enumerate(library.blocks):
        x = jnp.zeros((1,) + tuple(block.in_shape[1:]), jnp.float32)
        if i not in positions:
            out.append((("fixed", i), export_for(runner, block.fn, block.variables, x).model))
            continue
        for k, option in enumerate(library.options[positions[i]]):
            out.append(((positions[i], k),
                        export_for(runner, option.fn, option.variables, x).model))
    return out


def measure_block_table(library: BlockLibrary, runner, rounds: int, runs: int,
                        seed: int = 0) -> BlockTable:
    """Every block of ``block_models`` timed in the same interleaved rounds, twice."""
    keyed = block_models(library, runner)
    timed = architecture.measure_latencies(runner, [m for _, m in keyed], rounds, runs, seed)
    fixed, options = {}, {}
    for (key, _), row in zip(keyed, timed):
        if key[0] == "fixed":
            fixed[key[1]] = row["latency_ms"]
        else:
            options[key] = row["latency_ms"]
    retest = architecture.retest_tau(timed)
    return BlockTable(fixed, options, float("nan") if retest is None else retest)


def calibrated(table: BlockTable, log_target: bool = False):
    """A predictor factory: ``a * summed + b`` fitted on measured architectures."""
    return lambda: predictors.LinearOnFeatures(table.features, log_target=log_target)


__all__ = ["BlockTable", "block_models", "measure_block_table", "calibrated"]
