"""BatchNorm (and any per-channel affine) folded into the conv or dense before it.

An integer runtime has no BatchNorm: it multiplies the kernel by ``gamma / sqrt(var + eps)``
and adds the shift to the bias, before quantizing the weights. BatchNorm has no primitive
of its own, so it is found in the flat jaxpr as what it is: a chain of elementwise
``sub``/``add``/``mul``/``div`` equations right after a ``conv_general_dilated`` or
``dot_general``, each with a parameter-derived operand that varies along the output
channel axis only. Whatever module wrote it (Flax BatchNorm, a hand-written
``(y - mean) * rsqrt(var + eps) * scale + bias``, a Dense bias, a layer scale), the chain
collapses to ``y * a + b`` and folds as ``kernel * a`` and ``bias = b``, exactly.

The result is a new model ``(fn, variables)``: every folded op reads its kernel and a bias
from ``variables`` (named after the kernel: ``.../kernel`` and ``.../bias``); parameters
still used elsewhere keep their paths; BatchNorm statistics are gone.
"""
import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import source_info_util
from jax.extend import core as jcore

from core import primitives as P, rewrite
from quant import dataflow


# One step of the chain, ``y -> y op c`` with ``y`` at ``operand``, applied to the running
# ``y * scale + shift``: the new (scale, shift), or None where the step is not affine in y.
def _add(scale, shift, c, operand):
    return scale, shift + c


def _sub(scale, shift, c, operand):
    return (scale, shift - c) if operand == 0 else (-scale, c - shift)


def _mul(scale, shift, c, operand):
    return scale * c, shift * c


def _div(scale, shift, c, operand):
    return (scale / c, shift / c) if operand == 0 else None


AFFINE = {P.add_p: _add, P.sub_p: _sub, P.mul_p: _mul, P.div_p: _div}


@dataclasses.dataclass
class FoldedOp:
    """A conv/dot with the per-channel affine chain that follows it."""
    index: int                          # equation index of the conv/dot
    weight_operand: int
    out_axis: int                       # channel axis of the op's output
    kernel_axis: int                    # the same channels on the weight operand
    chain: List[Tuple[int, int]]        # (eqn index, operand carrying the activation)
    scale: np.ndarray                   # a (per output channel)
    shift: np.ndarray                   # b
    kernel_path: str = ""
    bias_path: str = ""
    source: str = ""


def _conv_channel_axis(eqn, weight_operand: int) -> Optional[Tuple[int, int]]:
    dims = eqn.params["dimension_numbers"]
    return (dims.out_spec[1], dims.rhs_spec[0]) if weight_operand == 1 else None


def _dot_channel_axis(eqn, weight_operand: int) -> Optional[Tuple[int, int]]:
    if weight_operand != 1:
        return None
    (contracting, batch) = eqn.params["dimension_numbers"]
    rhs_free = [a for a in range(len(eqn.invars[1].aval.shape))
                if a not in contracting[1] and a not in batch[1]]
    if len(rhs_free) != 1:
        return None
    return len(eqn.outvars[0].aval.shape) - 1, rhs_free[0]


OUTPUT_CHANNEL_AXIS = {P.conv_general_dilated_p: _conv_channel_axis,
                       P.dot_general_p: _dot_channel_axis}


def output_channel_axis(eqn, weight_operand: int) -> Optional[Tuple[int, int]]:
    """(output axis, weight axis) of a conv/dot's single output-channel axis, or None."""
    rule = OUTPUT_CHANNEL_AXIS.get(eqn.primitive)
    return rule(eqn, weight_operand) if rule is not None else None


def _per_channel(value: np.ndarray, out_ndim: int, axis: int, channels: int):
    """``value`` as a (channels,) vector if it only varies along ``axis``, else None."""
    value = np.asarray(value, np.float64)
    if value.ndim > out_ndim:
        return None
    full = value.reshape((1,) * (out_ndim - value.ndim) + value.shape)
    if any(n != 1 for a, n in enumerate(full.shape) if a != axis):
        return None
    return np.broadcast_to(full.reshape(-1), (channels,)).copy() \
        if full.shape[axis] in (1, channels) else None


def find_foldable(flat: dataflow.FlatModel) -> List[FoldedOp]:
    found = []
    for i, eqn in enumerate(flat.eqns):
        if eqn.primitive not in P.LINEAR:
            continue
        operands = [k for k, a in enumerate(eqn.invars)
                    if not isinstance(a, jcore.Literal) and flat.is_const(a)]
        if len(operands) != 1 or flat.is_const(eqn.invars[1 - operands[0]]):
            continue
        axes = output_channel_axis(eqn, operands[0])
        if axes is None:
            continue
        out_axis, kernel_axis = axes
        out = eqn.outvars[0]
        channels = out.aval.shape[out_axis]
        scale, shift = np.ones(channels), np.zeros(channels)
        chain = []
        var = out
        while True:
            uses = flat.uses(var)
            if len(uses) != 1 or flat.is_output(var):
                break
            j, operand = uses[0]
            nxt = flat.eqns[j]
            step = AFFINE.get(nxt.primitive)
            if step is None or len(nxt.invars) != 2:
                break
            other = nxt.invars[1 - operand]
            if not flat.is_const(other) or nxt.outvars[0].aval.shape != var.aval.shape:
                break
            c = _per_channel(flat.value(other), len(out.aval.shape), out_axis, channels)
            if c is None:
                break
            stepped = step(scale, shift, c, operand)
            if stepped is None:
                break
            scale, shift = stepped
            chain.append((j, operand))
            var = nxt.outvars[0]
        found.append(FoldedOp(i, operands[0], out_axis, kernel_axis, chain, scale, shift,
                              source=flat.source(i)))
    return found


def _set_path(tree: dict, path: str, value):
    node = tree
    parts = path.split("/")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _path_free(tree: dict, path: str, taken) -> bool:
    """True if ``path`` can hold a new leaf: not taken, and no prefix of it is a leaf."""
    if path in taken:
        return False
    node = tree
    for part in path.split("/")[:-1]:
        if part not in node:
            return True
        node = node[part]
        if not isinstance(node, dict):
            return False
    return not isinstance(node.get(path.split("/")[-1]), dict)


def _get_path(tree, path: str):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def _live_params(flat, folded: List[FoldedOp]) -> set:
    """Parameter invars still read once the folded chains are gone."""
    skipped = {j: op for f in folded for j, op in f.chain}
    weight_of = {f.index: f.weight_operand for f in folded}
    live = set(v for v in flat.jaxpr.outvars if not isinstance(v, jcore.Literal))
    for i in range(len(flat.eqns) - 1, -1, -1):
        eqn = flat.eqns[i]
        if not any(v in live for v in eqn.outvars):
            continue
        for k, atom in enumerate(eqn.invars):
            if isinstance(atom, jcore.Literal):
                continue
            if i in skipped and k != skipped[i]:
                continue
            if weight_of.get(i) == k:
                continue
            live.add(atom)
    return {v for v in flat.param_path if v in live}


def fold_batchnorm(fn, variables, *inputs):
    """``(folded_fn, folded_variables, folded_ops)``: the same function with every
    per-channel affine chain after a conv/dot folded into its kernel and a bias."""
    flat = dataflow.flatten(fn, variables, *inputs)
    folded = find_foldable(flat)
    live = _live_params(flat, folded)
    new_vars: Dict[str, Any] = {}
    taken = set()
    for var in live:
        path = flat.param_path[var]
        _set_path(new_vars, path, jnp.asarray(flat.value(var)))
        taken.add(path)
    for n, f in enumerate(folded):
        eqn = flat.eqns[f.index]
        kernel = flat.value(eqn.invars[f.weight_operand]).astype(np.float64)
        shape = [1] * kernel.ndim
        shape[f.kernel_axis] = -1
        kernel = kernel * f.scale.reshape(shape)
        root = flat.root_param(eqn.invars[f.weight_operand]) or f"folded/op{n}/kernel"
        kernel_path = root
        bias_path = root.rsplit("/", 1)[0] + "/bias" if "/" in root else root + "_bias"
        if not (_path_free(new_vars, kernel_path, taken) and
                _path_free(new_vars, bias_path, taken)):
            kernel_path, bias_path = f"folded/op{n}/kernel", f"folded/op{n}/bias"
        taken.update((kernel_path, bias_path))
        f.kernel_path, f.bias_path = kernel_path, bias_path
        dtype = eqn.invars[f.weight_operand].aval.dtype
        _set_path(new_vars, kernel_path, jnp.asarray(kernel, dtype))
        _set_path(new_vars, bias_path, jnp.asarray(f.shift, dtype))

    originals = {v: flat.value(v) for v in flat.param_path}
    live_paths = {v: flat.param_path[v] for v in live}
    by_index = {f.index: f for f in folded}
    passthrough = {j: op for f in folded for j, op in f.chain}
    n_params = flat.traced.num_params

    def folded_fn(v, *xs):
        param_args = [(_get_path(v, live_paths[var]) if var in live_paths else originals[var])
                      for var in flat.jaxpr.invars[:n_params]]
        args = param_args + jax.tree_util.tree_leaves(xs)

        retraced = flat.at(*xs)

        def hook(eqn, invals, path):
            i = retraced.analysed_index(path[0])
            if len(path) != 1 or i is None:
                return None
            if i in passthrough:
                return [invals[passthrough[i]]]
            f = by_index.get(i)
            if f is None:
                return None
            invals = list(invals)
            invals[f.weight_operand] = _get_path(v, f.kernel_path)
            (out,) = rewrite.bind_equation(eqn, invals)
            shape = [1] * out.ndim
            shape[f.out_axis] = -1
            with source_info_util.user_context(eqn.source_info.traceback):
                return [out + _get_path(v, f.bias_path).reshape(shape)]
        outs = rewrite.evaluate(retraced.closed, args, hook)
        return jax.tree_util.tree_unflatten(flat.traced.out_tree, outs)
    return folded_fn, new_vars, folded
