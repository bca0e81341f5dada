"""Empirical bias correction: remove the mean output shift that weight rounding causes.

Quantizing a kernel changes the expected output of its layer by ``E[(W - Wq) x]`` per
output channel, a systematic error that per-channel rounding does not average out
(Nagel et al. 2019, Finkelstein et al. 2019). On calibration batches, every conv/dot with
a quantized weight is evaluated twice on the same (quantized) input, with the float and
the quantized kernel; the mean difference per output channel is added to the bias that
follows the op (a parameter after ``quant.batchnorm_folding``). One pass, all layers.
"""
from typing import Dict, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from core import rewrite
from quant.batchnorm_folding import _get_path, _set_path, output_channel_axis
from quant.equalization import _bias_after, _tree_like, jax_to_numpy_tree
from quant.fakequant import QuantizedModel


def _corrections_fn(model: QuantizedModel, qparams):
    """jitted (variables, x) -> {weight site: mean output shift per channel}."""
    def run(variables, x):
        shifts = {}

        def observe_weight_op(site, eqn, float_invals, quant_invals):
            k = site.consumers[0][1]
            axes = output_channel_axis(eqn, k)
            if axes is None:
                return
            # The op's own (quantized) activation input, with the float and the quantized
            # kernel: the difference is the weight-rounding error alone.
            mixed = list(quant_invals)
            mixed[k] = float_invals[k]
            float_out = rewrite.bind_equation(eqn, mixed)[0]
            quant_out = rewrite.bind_equation(eqn, quant_invals)[0]
            reduce = tuple(a for a in range(float_out.ndim) if a != axes[0])
            shifts[site.name] = jnp.mean(float_out - quant_out, axis=reduce)
        model.apply(variables, qparams, x, observe_weight_op=observe_weight_op)
        return shifts
    return jax.jit(run)


def bias_correction(model: QuantizedModel, variables, qparams, batches: Iterable):
    """Variables with each quantized conv/dot's following bias shifted by the mean
    output error of its weight quantization. Returns ``(new_variables, corrected)``."""
    run = _corrections_fn(model, qparams)
    totals: Dict[str, np.ndarray] = {}
    count = 0
    for batch in batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        for name, shift in run(variables, x).items():
            totals[name] = totals.get(name, 0.0) + np.asarray(shift, np.float64)
        count += 1
    new = jax_to_numpy_tree(variables)
    corrected = {}
    flat = model.flat
    for name, total in totals.items():
        site = model.sites[name]
        i, k = site.consumers[0]
        eqn = flat.eqns[i]
        axes = output_channel_axis(eqn, k)
        bias = _bias_after(flat, eqn.outvars[0], axes[0]) if axes else None
        if bias is None:
            continue
        b = _get_path(new, bias[0])
        _set_path(new, bias[0], b + (total / count).reshape(b.shape))
        corrected[name] = bias[0]
    return _tree_like(variables, new), corrected
