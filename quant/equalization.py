"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization").

For two weight layers joined by a positively homogeneous activation (ReLU, or nothing),
``W2 . relu(W1 x + b1) == (W2 S) . relu(S^-1 (W1 x + b1))`` for any positive diagonal S.
Choosing ``s_i = sqrt(r1_i / r2_i)`` (r: the weight range of channel i in each layer)
makes both layers' per-channel ranges equal, which is what per-tensor weight quantization
needs (depthwise convs and BN-folded kernels have channel ranges that differ by orders of
magnitude). The float function is unchanged; only the variables change.

Pairs are found in the flat jaxpr of a BN-folded model (``quant.batchnorm_folding``): a
conv/dot whose kernel and bias are parameters, whose output (after its bias add) feeds
only a ReLU (``max(x, 0)``) or directly the next conv/dot, which reads it as its only
activation operand. ReLU6 and other clipping activations are not homogeneous and are
skipped. Channel i of the next layer is its input channel i (a regular conv or dense) or,
for a depthwise conv, its output channels ``i*m ... i*m+m-1``.
"""
import dataclasses
from typing import List, Optional

import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from core import primitives as P
from quant import dataflow
from quant.batchnorm_folding import _get_path, _set_path, output_channel_axis


@dataclasses.dataclass
class EqualizationPair:
    first_kernel: str
    first_bias: str
    second_kernel: str
    first_axis: int          # output-channel axis of the first kernel
    second_axis: int         # axis of the second kernel carrying channel i
    depthwise_multiplier: int  # 0: input channels; m: depthwise, output channels i*m..
    source: str


def _bias_after(flat, var, axis) -> Optional[tuple]:
    """(bias parameter path, output var after the bias add) if ``var`` feeds a bias add."""
    uses = flat.uses(var)
    if len(uses) != 1:
        return None
    j, operand = uses[0]
    eqn = flat.eqns[j]
    if eqn.primitive is not P.add_p:
        return None
    other = eqn.invars[1 - operand]
    path = flat.root_param(other) if not isinstance(other, jcore.Literal) else None
    if path is None or flat.value(other).size != var.aval.shape[axis]:
        return None
    return path, eqn.outvars[0]


def _through_relu(flat, var):
    """The var after a ReLU (or the var itself when it feeds a conv/dot directly)."""
    uses = flat.uses(var)
    if len(uses) != 1:
        return None
    j, operand = uses[0]
    eqn = flat.eqns[j]
    if eqn.primitive is P.max_p:
        other = eqn.invars[1 - operand]
        if isinstance(other, jcore.Literal) and float(other.val) == 0.0:
            return eqn.outvars[0]
        return None
    return var


LINEAR = P.LINEAR


def _is_param(flat: dataflow.FlatModel, atom) -> bool:
    return not isinstance(atom, jcore.Literal) and atom in flat.param_path


def find_pairs(flat: dataflow.FlatModel) -> List[EqualizationPair]:
    pairs = []
    for i, eqn in enumerate(flat.eqns):
        if eqn.primitive not in LINEAR:
            continue
        kernel = eqn.invars[1]
        if not _is_param(flat, kernel) or flat.is_const(eqn.invars[0]):
            continue
        axes = output_channel_axis(eqn, 1)
        if axes is None:
            continue
        out_axis, kernel_axis = axes
        bias = _bias_after(flat, eqn.outvars[0], out_axis)
        if bias is None:
            continue
        act = _through_relu(flat, bias[1])
        if act is None or flat.is_output(act) or len(flat.uses(act)) != 1:
            continue
        j, operand = flat.uses(act)[0]
        nxt = flat.eqns[j]
        if (operand != 0 or nxt.primitive not in LINEAR
                or not _is_param(flat, nxt.invars[1])):
            continue
        second = _second_axis(nxt, eqn.outvars[0].aval.shape[out_axis])
        if second is None:
            continue
        pairs.append(EqualizationPair(flat.param_path[kernel], bias[0],
                                      flat.param_path[nxt.invars[1]], kernel_axis,
                                      second[0], second[1], flat.source(i)))
    return pairs


def _conv_second_axis(eqn, channels: int):
    dims = eqn.params["dimension_numbers"]
    if eqn.params["batch_group_count"] != 1:
        return None
    groups = eqn.params["feature_group_count"]
    if groups == 1:
        return dims.rhs_spec[1], 0
    if groups == channels and eqn.invars[1].aval.shape[dims.rhs_spec[1]] == 1:
        return dims.rhs_spec[0], eqn.invars[1].aval.shape[dims.rhs_spec[0]] // channels
    return None


def _dot_second_axis(eqn, channels: int):
    (contracting, batch), _ = eqn.params["dimension_numbers"], None
    if batch[1] or len(contracting[1]) != 1 or len(eqn.invars[1].aval.shape) != 2:
        return None
    return contracting[1][0], 0


# (axis of the second kernel carrying channel i, depthwise multiplier), or None.
SECOND_AXIS = {P.conv_general_dilated_p: _conv_second_axis, P.dot_general_p: _dot_second_axis}


def _second_axis(eqn, channels: int):
    return SECOND_AXIS[eqn.primitive](eqn, channels)


def _channel_range(w: np.ndarray, axis: int, multiplier: int) -> np.ndarray:
    moved = np.moveaxis(np.abs(w), axis, 0)
    per = moved.reshape(moved.shape[0], -1).max(axis=1)
    if multiplier:
        per = per.reshape(-1, multiplier).max(axis=1)
    return per


def _scale_axis(w: np.ndarray, axis: int, factors: np.ndarray, multiplier: int):
    if multiplier:
        factors = np.repeat(factors, multiplier)
    shape = [1] * w.ndim
    shape[axis] = -1
    return w * factors.reshape(shape)


def equalize(fn, variables, *inputs, iterations: int = 4, min_range: float = 1e-8):
    """Variables of the same function with every ReLU/identity pair equalized
    (``fn`` must read kernels and biases as parameters: fold BatchNorm first).
    Returns ``(new_variables, pairs)``."""
    flat = dataflow.flatten(fn, variables, *inputs)
    pairs = find_pairs(flat)
    new = jax_to_numpy_tree(variables)
    for _ in range(iterations):
        for p in pairs:
            w1 = _get_path(new, p.first_kernel)
            b1 = _get_path(new, p.first_bias)
            w2 = _get_path(new, p.second_kernel)
            r1 = _channel_range(w1, p.first_axis, 0)
            r2 = _channel_range(w2, p.second_axis, p.depthwise_multiplier)
            ok = (r1 > min_range) & (r2 > min_range)
            s = np.where(ok, np.sqrt(np.where(ok, r1, 1.0) / np.where(ok, r2, 1.0)), 1.0)
            _set_path(new, p.first_kernel, _scale_axis(w1, p.first_axis, 1.0 / s, 0))
            _set_path(new, p.first_bias, (b1.reshape(-1) / s).reshape(b1.shape))
            _set_path(new, p.second_kernel,
                      _scale_axis(w2, p.second_axis, s, p.depthwise_multiplier))
    result = _tree_like(variables, new)
    return result, pairs


def jax_to_numpy_tree(tree):
    if isinstance(tree, dict):
        return {k: jax_to_numpy_tree(v) for k, v in tree.items()}
    return np.asarray(tree, np.float64) if np.issubdtype(np.asarray(tree).dtype,
                                                         np.floating) else np.asarray(tree)


def _tree_like(reference, new):
    if isinstance(reference, dict):
        return {k: _tree_like(reference[k], new[k]) for k in reference}
    return jnp.asarray(new, jnp.asarray(reference).dtype)
