"""Post-training calibration: quantization ranges from real data batches.

Activation ranges are observed on the float model (every quantizer off) over calibration
batches; each site keeps its running min / max and a random sample of its values, from
which three range estimators choose:

- ``minmax``: the observed extremes (no clipping error, the most rounding error);
- ``percentile``: the p-th and (100 - p)-th percentiles (clips rare outliers);
- ``mse``: the clipping of the min-max range that minimizes the mean squared quantization
  error on the sample (grid search), what most NPU toolchains call "MSE" or "entropy-like".

Weights use min-max per channel (or per tensor), or the same MSE search per channel.
The result is the ``qparams`` pytree that ``QuantizedModel.apply`` reads.
"""
import warnings
from typing import Dict, Iterable

import jax
import numpy as np

from quant.fakequant import QuantizedModel
from quant.quantizers import qparams_from_range, quant_error

METHODS = ("minmax", "percentile", "mse")
# Fractions of the min-max range tried by the MSE search: fine near 1, geometric down to
# 1/1000 for tensors with extreme outliers.
CLIP_GRID = np.unique(np.concatenate([np.linspace(0.5, 1.0, 26), np.geomspace(1e-3, 0.5, 40)]))


class RangeObserver:
    """Running extremes and a bounded random sample of one tensor's values."""

    def __init__(self, sample_size: int = 100_000, seed: int = 0):
        self.lo, self.hi = np.inf, -np.inf
        self.samples = []
        self.sample_size = sample_size
        self.seen = 0
        self.rng = np.random.default_rng(seed)

    def update(self, value: np.ndarray):
        value = np.asarray(value, np.float32).reshape(-1)
        self.lo = min(self.lo, float(value.min()))
        self.hi = max(self.hi, float(value.max()))
        take = min(value.size, max(1, self.sample_size // 8))
        self.samples.append(self.rng.choice(value, take, replace=False)
                            if take < value.size else value)
        self.seen += value.size
        if sum(s.size for s in self.samples) > 2 * self.sample_size:
            pooled = np.concatenate(self.samples)
            self.samples = [self.rng.choice(pooled, self.sample_size, replace=False)]

    def sample(self) -> np.ndarray:
        return np.concatenate(self.samples) if self.samples else np.zeros(1, np.float32)


def activation_range(observer: RangeObserver, spec, method: str, percentile: float):
    if method == "minmax":
        return observer.lo, observer.hi
    x = observer.sample()
    if method == "percentile":
        return (float(np.percentile(x, 100 - percentile)), float(np.percentile(x, percentile)))
    if method == "mse":
        errors = [quant_error(x, a * observer.lo, a * observer.hi, spec) for a in CLIP_GRID]
        a = CLIP_GRID[int(np.argmin(errors))]
        return a * observer.lo, a * observer.hi
    raise ValueError(f"calibration method {method!r}: choose one of {METHODS}")


def weight_qparams(w: np.ndarray, site, method: str = "minmax"):
    """(scale, zero point) of one weight site; per channel along ``site.channel_axes``."""
    w = np.asarray(w, np.float32)
    keep = bool(site.scale_shape)
    axes = tuple(a for a in range(w.ndim) if a not in site.channel_axes)
    lo = np.min(w, axis=axes, keepdims=keep)
    hi = np.max(w, axis=axes, keepdims=keep)
    if method == "mse":
        best_err, best = None, None
        for a in CLIP_GRID:
            scale, zp = qparams_from_range(a * lo, a * hi, site.spec)
            q = np.clip(np.round(w / scale) + zp, site.spec.qmin, site.spec.qmax)
            err = np.mean(np.square((q - zp) * scale - w), axis=axes, keepdims=keep)
            if best is None:
                best_err, best = err, np.full_like(err, a)
            else:
                better = err < best_err
                best_err = np.where(better, err, best_err)
                best = np.where(better, a, best)
        lo, hi = best * lo, best * hi
    elif method != "minmax":
        raise ValueError(f"weight calibration {method!r}: choose 'minmax' or 'mse'")
    return qparams_from_range(lo, hi, site.spec)


def _non_finite(what: str, tree) -> str:
    """``what`` (and its leaf) when a float leaf of ``tree`` holds NaN or inf, else ''."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        leaf = np.asarray(leaf)
        if leaf.dtype.kind in "fc" and not np.all(np.isfinite(leaf)):
            return what + (jax.tree_util.keystr(path) if path else "")
    return ""


def positional_inputs(model: QuantizedModel) -> int:
    """How many positional inputs the quantized model takes (its traced ``inputK`` paths)."""
    traced = model.flat.traced
    indices = [int(path[len("input"):].split("/")[0])
               for path, is_param in zip(traced.in_paths, traced.is_param) if not is_param]
    return max(indices, default=0) + 1


def batch_inputs(batch, n_inputs: int, index: int) -> tuple:
    """The model inputs of one calibration batch. One input: the batch itself, or the first
    element of a tuple / list (``(input, label...)``). ``n_inputs`` > 1: a tuple / list whose
    first ``n_inputs`` elements are the inputs (labels may follow)."""
    if n_inputs == 1:
        return (batch[0] if isinstance(batch, (tuple, list)) else batch,)
    if not isinstance(batch, (tuple, list)) or len(batch) < n_inputs:
        got = (f"a {type(batch).__name__} of {len(batch)}"
               if isinstance(batch, (tuple, list)) else f"one {type(batch).__name__}")
        raise ValueError(f"calibrate: the model takes {n_inputs} positional inputs, so each "
                         f"batch must be a tuple of them (labels may follow); batch {index} "
                         f"is {got}")
    return tuple(batch[:n_inputs])


def calibrate(model: QuantizedModel, variables, batches: Iterable, method: str = "mse",
              percentile: float = 99.99, weight_method: str = "minmax",
              sample_size: int = 100_000) -> Dict[str, Dict[str, np.ndarray]]:
    """``qparams`` for every site: activations from ``batches``, weights from ``variables``.
    For a model of one input a batch is an array or a tuple whose first element is the
    input; for a model of several positional inputs, a tuple of all of them (labels may
    follow), see ``batch_inputs``.

    A batch with NaN or inf in its input or in any activation is skipped with a warning
    naming its index: one NaN image used to leave finite scales that were nonetheless
    wrong by the whole output range. If every batch is non-finite, ValueError."""
    collect = model.collector()
    observers: Dict[str, RangeObserver] = {}
    weights: Dict[str, np.ndarray] = {}
    seen, skipped = 0, []
    n_inputs = positional_inputs(model)
    for index, batch in enumerate(batches):
        seen += 1
        xs = batch_inputs(batch, n_inputs, index)
        values, where = {}, _non_finite("the input", xs if n_inputs > 1 else xs[0])
        if not where:
            values = jax.tree.map(np.asarray, collect(variables, *xs))
            where = _non_finite("activation", {name: value for name, value in values.items()
                                               if model.sites[name].kind != "weight"})
        if where:
            skipped.append(index)
            warnings.warn(f"calibrate: batch {index} skipped: {where} is not finite "
                          f"(NaN or inf would corrupt the ranges)", RuntimeWarning,
                          stacklevel=2)
            continue
        for name, value in values.items():
            if model.sites[name].kind == "weight":
                weights[name] = value
                continue
            observers.setdefault(name, RangeObserver(sample_size, len(observers)))
            observers[name].update(value)
    if seen and len(skipped) == seen:
        raise ValueError(f"calibrate: every one of the {seen} batches has non-finite values "
                         f"(NaN or inf); nothing to calibrate on")
    if not observers and not weights:
        raise ValueError("calibrate needs at least one batch")
    scales, zero_points = {}, {}
    for name, site in model.sites.items():
        if site.kind == "weight":
            scale, zp = weight_qparams(weights[name], site, weight_method)
        else:
            lo, hi = activation_range(observers[name], site.spec, method, percentile)
            scale, zp = qparams_from_range(lo, hi, site.spec)
        scales[name], zero_points[name] = np.asarray(scale), np.asarray(zp)
    return {"scale": scales, "zero_point": zero_points}


def update_weight_qparams(model: QuantizedModel, variables, qparams, x,
                          method: str = "minmax"):
    """qparams with the weight ranges recomputed for new ``variables`` (after equalization
    or bias correction), activation ranges kept."""
    values = model.site_values(variables, x, names=[n for n, s in model.sites.items()
                                                    if s.kind == "weight"])
    scales, zps = dict(qparams["scale"]), dict(qparams["zero_point"])
    for name, w in values.items():
        scales[name], zps[name] = weight_qparams(w, model.sites[name], method)
    return {"scale": scales, "zero_point": zps}
