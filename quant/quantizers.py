"""Uniform affine quantizers: integer grids, ranges -> (scale, zero point), fake-quant.

Fake-quant ``(clip(round(x / s) + z, qmin, qmax) - z) * s`` is what an integer runtime
computes, in float. Its gradient is the straight-through estimator for ``round`` (identity)
and zero where the value clips; with respect to the scale it is then exactly LSQ's
(Esser et al. 2020) ``round(x/s) - x/s`` inside the range and ``qmin - z`` / ``qmax - z``
outside, so learnable scales need nothing else but LSQ's gradient scaling
``1 / sqrt(numel * qmax)``, applied by ``lsq_scale``. Zero points stay fixed in training.
"""
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from quant.profile import QuantSpec

MIN_SCALE = 1e-8


def round_ste(x):
    """round with an identity gradient."""
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


def fake_quant(x, scale, zero_point, qmin: int, qmax: int):
    """Quantize-dequantize ``x``; scale / zero point broadcast against ``x``."""
    scale = jnp.maximum(scale, MIN_SCALE)
    zero_point = jax.lax.stop_gradient(zero_point)
    r = round_ste(x / scale) + zero_point
    # clip with gradient 1 on the whole grid [qmin, qmax] (jnp.clip would give 1/2 on its
    # bounds) and 0 outside it
    q = jnp.where((r >= qmin) & (r <= qmax), r, jax.lax.stop_gradient(jnp.clip(r, qmin, qmax)))
    return ((q - zero_point) * scale).astype(x.dtype)


def lsq_scale(scale, numel: int, qmax: int):
    """The same scale, with its gradient multiplied by LSQ's 1 / sqrt(numel * qmax)."""
    g = 1.0 / np.sqrt(max(numel, 1) * max(qmax, 1))
    return scale * g + jax.lax.stop_gradient(scale * (1.0 - g))


def qparams_from_range(lo, hi, spec: QuantSpec) -> Tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) mapping [lo, hi] (arrays or scalars) onto ``spec``'s grid.

    The range always contains 0 so that zero (padding, ReLU) is exact.
    """
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    if spec.symmetric and not spec.unsigned:
        bound = np.maximum(np.abs(lo), np.abs(hi))
        scale = np.maximum(bound / spec.qmax, MIN_SCALE)
        return scale.astype(np.float32), np.zeros_like(scale, np.float32)
    scale = np.maximum((hi - lo) / (spec.qmax - spec.qmin), MIN_SCALE)
    zero_point = np.clip(np.round(spec.qmin - lo / scale), spec.qmin, spec.qmax)
    return scale.astype(np.float32), zero_point.astype(np.float32)


def quantize_to_int(x, scale, zero_point, spec: QuantSpec) -> np.ndarray:
    """The integers a runtime stores: ``clip(round(x / s) + z)``, as int64."""
    q = np.round(np.asarray(x, np.float64) / np.asarray(scale, np.float64)) + zero_point
    return np.clip(q, spec.qmin, spec.qmax).astype(np.int64)


def quant_error(x, lo, hi, spec: QuantSpec) -> float:
    """Mean squared error of fake-quantizing ``x`` with range [lo, hi] (numpy)."""
    scale, zp = qparams_from_range(lo, hi, spec)
    q = np.clip(np.round(x / scale) + zp, spec.qmin, spec.qmax)
    return float(np.mean(np.square((q - zp) * scale - x)))
