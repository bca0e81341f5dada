"""Input statistics of every site on real data: the Gram matrix X^T X of its input rows.

The data-aware solution, the error-versus-rank curves and the measured output errors all
need only G = X^T X per site (per group), never X itself: a conv's im2col matrix on a
whole calibration set would not fit in memory, its Gram is (k*k*c_in)^2. Each batch's Gram
is computed in float32 at HIGHEST precision inside one jitted evaluation of the model
(the site inputs come from ``FactoredFunction``'s observer), and summed over batches in
float64 on the host.
"""
import dataclasses
from typing import Dict, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lowrank.function import FactoredFunction
from lowrank.kernels import RULES


@dataclasses.dataclass
class InputStats:
    """``gram`` (groups, m, m) and ``sums`` (groups, m) float64, summed over ``rows``
    input rows (the sums give the mean a layer's bias can absorb)."""
    gram: np.ndarray
    rows: int
    sums: np.ndarray = None

    @property
    def covariance(self) -> np.ndarray:
        return self.gram / max(self.rows, 1)


def as_input_tuple(batch) -> tuple:
    """A calibration batch is an input array, or a tuple of the model's inputs."""
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def collect(ff: FactoredFunction, variables, batches: Iterable,
            paths: Sequence[str] = None) -> Dict[str, InputStats]:
    """Gram matrices of the inputs of the sites at ``paths`` (all sites if None), over
    ``batches`` evaluated with ``variables`` (original or factorized)."""
    wanted = set(ff.site_paths if paths is None else paths)

    @jax.jit
    def batch_grams(v, inputs):
        grams, sums, rows = {}, {}, {}

        def observe(path, eqn, k, invals, outs):
            if path not in wanted:
                return
            x = RULES[eqn.primitive].input_matrix(eqn, k, invals[1 - k])
            x = x.astype(jnp.float32)
            grams[path] = jnp.einsum("grm,grk->gmk", x, x, precision=lax.Precision.HIGHEST)
            sums[path] = jnp.sum(x, axis=1)
            rows[path] = x.shape[1]
        ff.run(v, *inputs, observe=observe)
        return grams, sums, rows

    totals: Dict[str, InputStats] = {}
    for batch in batches:
        grams, sums, rows = batch_grams(variables, as_input_tuple(batch))
        for path, gram in grams.items():
            g, s = np.asarray(gram, np.float64), np.asarray(sums[path], np.float64)
            if path in totals:
                totals[path].gram += g
                totals[path].sums += s
                totals[path].rows += int(rows[path])
            else:
                totals[path] = InputStats(g, int(rows[path]), s)
    missing = wanted - set(totals)
    if missing:
        raise ValueError(f"no calibration data reached {sorted(missing)} (no batches?)")
    return totals
