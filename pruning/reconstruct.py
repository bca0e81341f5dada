"""Least-squares reconstruction of a pruned model's linear layers on calibration data.

Removing channels changes what every later layer sees. Fine-tuning repairs that slowly and,
on small, already efficient real models (MediaPipe's selfie segmenter), not at all: a few
optimizer steps move the weights of a 100k-parameter network off its narrow optimum faster
than they recover the removed channels' contribution. The removed channels' contribution is
largely predictable from the kept ones (neighbouring channels are correlated, and a
channel's mean is a constant the next layer's bias can absorb), and the best linear
prediction has a closed form. This is the weight reconstruction of channel pruning
(He et al. 2017 "Channel Pruning for Accelerating Very Deep Neural Networks", ThiNet, and
AIMET's channel pruning), done on any JAX model:

for every linear layer (``lowrank.sites``: a conv or dot whose kernel is a parameter used
nowhere else), with ``X_p`` its input rows in the PRUNED model and ``X_o W + b`` its output
in the ORIGINAL model on the same images, solve

    min_{W', b'}  || X_p W' + b' - (X_o W + b) ||^2 + lam ||W' - W_p||^2 + lam_b ||b' - b_p||^2

through the Gram matrices (``lowrank.calibration`` explains why never X itself), for the
kept output columns only; the ridge pulls towards the pruned model's own weights ``W_p, b_p``
(``_solve`` says why). Layers whose inputs lost channels get the compensation; every
other layer also corrects the error that reaches it from upstream. Layers are solved in
program order, each on the inputs its already corrected predecessors give it; layers that
do not read each other's outputs share one pass over the data (``_stages``). ``b'`` is solved only where the layer's bias is found
(``bias_of``: a 1-D parameter added on the output's feature axis); without it, the
layer is solved without an intercept.
"""
import dataclasses
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore

from core import primitives as P
from core.rewritten import flatten, leaves_by_path
from lowrank.calibration import as_input_tuple
from lowrank.function import FactoredFunction, replace_kernels
from lowrank.kernels import RULES
from lowrank.sites import Site, find_sites
from pruning.prune import Pruned, PruneHook


@dataclasses.dataclass
class LayerFit:
    """One layer's reconstruction, errors relative to the original layer's output energy."""
    path: str
    bias_path: Optional[str]
    error_before: float
    error_after: float


@dataclasses.dataclass
class _Layer:
    """A linear layer of both models: where its kept output columns come from."""
    original: Site
    pruned: Site
    columns: np.ndarray            # original output column of each pruned column
    bias_path: Optional[str]


# Output feature axis of a linear equation whose kernel is operand k (None: not one axis).
def _conv_feature_axis(eqn, k):
    return eqn.params["dimension_numbers"].out_spec[1]


def _dot_feature_axis(eqn, k):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    kernel_free = eqn.invars[k].aval.ndim - len(rc if k == 1 else lc)
    if k != 1 or kernel_free != 1:
        return None
    return eqn.outvars[0].aval.ndim - 1


FEATURE_AXIS = P.rule_table({P.conv_general_dilated_p: _conv_feature_axis,
                             P.dot_general_p: _dot_feature_axis})
# Ops between a bias parameter and the add: they move its one axis, never mix values.
BIAS_PATH_OPS = P.RESHAPES | P.CASTS | P.ANNOTATIONS


def bias_of(traced, site: Site) -> Optional[str]:
    """The 1-D parameter added to ``site``'s output along its feature axis, if that add is
    the output's only use (``y = conv(x, W) + b``)."""
    jaxpr, eqn = traced.jaxpr, site.eqn
    axis = FEATURE_AXIS[eqn.primitive](eqn, site.operand)
    out = eqn.outvars[0]
    users = [e for e in jaxpr.eqns if any(v is out for v in e.invars)]
    if axis is None or len(users) != 1 or users[0].primitive is not P.add_p:
        return None
    other = [v for v in users[0].invars if v is not out]
    if len(other) != 1 or not isinstance(other[0], jcore.Var):
        return None
    producer = {o: e for e in jaxpr.eqns for o in e.outvars}
    params = {v: p for p, v in traced.param_invars()}
    chain, value = [], other[0]
    while value not in params:
        e = producer.get(value)
        if e is None or e.primitive not in BIAS_PATH_OPS:
            return None
        chain.append(e)
        value = e.invars[0]
    n = out.aval.shape[axis]
    if value.aval.shape != (n,):
        return None
    at = 0                                   # which axis holds the bias values
    for e in reversed(chain):
        shape = e.outvars[0].aval.shape
        if e.primitive is P.broadcast_in_dim_p:
            at = e.params["broadcast_dimensions"][at]
        else:
            sized = [d for d, s in enumerate(shape) if s != 1]
            if len(sized) != 1 or shape[sized[0]] != n:
                return None
            at = sized[0]
    return params[value] if at == axis and other[0].aval.ndim == out.aval.ndim else None


def flat_index(shape) -> np.ndarray:
    """Each entry's own flat position, in ``shape``: passed through a layout change
    (``kernel_matrix``, pruning's slicing) it says where every entry went."""
    return np.arange(int(np.prod(shape))).reshape(shape)


def _kept_flat(pruned: Pruned, path: str, shape) -> np.ndarray:
    """The original flat indices of a parameter's entries that the pruned model keeps,
    in the pruned parameter's shape."""
    fn = pruned.fn
    hook = PruneHook(fn.plan, pruned.keep, {})
    return np.asarray(hook.conform(flat_index(shape),
                                   fn.plan.invars[fn.param_paths.index(path)]))


def kernel_matrix(site: Site, kernel) -> np.ndarray:
    """``kernel`` (in ``site``'s layout) as the (inputs, outputs) matrix the layer applies
    to its input rows (``lowrank.kernels``; an ungrouped layer, so one matrix)."""
    return np.asarray(RULES[site.eqn.primitive].kernel_matrices(site.eqn, site.operand,
                                                                jnp.asarray(kernel)))[0]


def _layers(original, variables, pruned: Pruned, example_inputs) -> List[_Layer]:
    now = flatten(pruned.fn, pruned.variables, *example_inputs)
    pruned_sites = {s.path: s for s in find_sites(now)[0]}
    full = leaves_by_path(variables)
    layers = []
    for site in find_sites(original)[0]:
        twin = pruned_sites.get(site.path)
        if twin is None or site.geometry.groups != 1 or twin.geometry.groups != 1:
            continue
        shape = np.shape(full[site.path])
        flat = kernel_matrix(site, flat_index(shape))
        column_of = np.empty(flat.size, np.int64)
        column_of[flat] = np.broadcast_to(np.arange(flat.shape[1]), flat.shape)
        kept = kernel_matrix(twin, _kept_flat(pruned, site.path, shape))
        columns = column_of[kept[0]]
        bias = bias_of(original, site)
        if bias is not None and not np.array_equal(
                _kept_flat(pruned, bias, np.shape(full[bias])), columns):
            bias = None
        layers.append(_Layer(site, twin, columns, bias))
    return layers


def _statistics(fn, variables, pruned_fn, layers: List[_Layer]):
    """A jitted ``(variables, pruned variables, inputs) -> per-layer sums`` of ``layers``:
    the pruned input's Gram and row sums, its cross product with the original output, and
    that output's column sums and energy."""
    original = FactoredFunction(fn, variables, [l.original.path for l in layers])
    by_path = {l.original.path: l for l in layers}

    @jax.jit
    def sums(v, pv, inputs):
        biases = leaves_by_path(v)
        targets, stats = {}, {}

        def observe_original(path, eqn, k, invals, outs):
            layer = by_path[path]
            x = RULES[eqn.primitive].input_matrix(eqn, k, invals[1 - k])[0]
            w = RULES[eqn.primitive].kernel_matrices(eqn, k, invals[k])[0][:, layer.columns]
            t = jnp.matmul(x.astype(jnp.float32), w.astype(jnp.float32),
                           precision=lax.Precision.HIGHEST)
            if layer.bias_path is not None:
                t = t + biases[layer.bias_path][layer.columns].astype(jnp.float32)
            targets[path] = t

        def observe_pruned(path, eqn, k, invals, outs):
            if path not in targets:
                return
            x = RULES[eqn.primitive].input_matrix(eqn, k, invals[1 - k])[0]
            x = x.astype(jnp.float32)
            t = targets[path]
            hi = lax.Precision.HIGHEST
            stats[path] = dict(gram=jnp.matmul(x.T, x, precision=hi),
                               cross=jnp.matmul(x.T, t, precision=hi),
                               x_sum=x.sum(0), t_sum=t.sum(0), t_energy=jnp.sum(t * t),
                               rows=jnp.asarray(x.shape[0], jnp.float32))

        original.run(v, *inputs, observe=observe_original)
        pruned_fn.run(pv, *inputs, observe=observe_pruned)
        return stats

    return sums


def _solve(s: Dict[str, np.ndarray], w0: np.ndarray, b0: Optional[np.ndarray],
           ridge: float):
    """(W', b') minimising ``|X W' + b' - T|^2 + lam |W' - w0|^2 + lam_b |b' - b0|^2``
    from the summed statistics (float64), ``lam = ridge x`` the mean input energy per
    feature, ``lam_b = ridge x rows``. The penalty pulls towards the current weights, not
    towards zero: a layer that sees few rows (a squeeze-excitation conv sees one per image)
    would otherwise fit the calibration images exactly and blow up on others."""
    g, c = s["gram"], s["cross"]
    m = g.shape[0]
    lam = ridge * max(np.trace(g) / m, 1e-12)
    g = g + np.eye(m) * lam
    c = c + lam * w0
    if b0 is None:
        return np.linalg.solve(g, c), None
    lam_bias = ridge * s["rows"]             # the constant feature's energy is the rows
    a = np.block([[g, s["x_sum"][:, None]],
                  [s["x_sum"][None, :], (s["rows"] + lam_bias)[None, None]]])
    b = np.concatenate([c, (s["t_sum"] + lam_bias * b0)[None, :]], 0)
    solution = np.linalg.solve(a, b)
    return solution[:-1], solution[-1]


def _error(s, w, b) -> float:
    """|| X W + b - T ||^2 / || T ||^2 from the sums."""
    b = np.zeros(w.shape[1]) if b is None else b
    err = (np.sum(w * (s["gram"] @ w)) + 2 * s["x_sum"] @ w @ b + s["rows"] * b @ b
           - 2 * np.sum(w * s["cross"]) - 2 * s["t_sum"] @ b + s["t_energy"])
    return float(max(err, 0.0) / max(s["t_energy"], 1e-30))


def _as_kernel(site: Site, w: np.ndarray, like) -> np.ndarray:
    """The matrix ``w`` written back in the layout of the kernel ``like``."""
    shape = np.shape(like)
    position = kernel_matrix(site, flat_index(shape))
    kernel = np.zeros(int(np.prod(shape)), np.float64)
    kernel[position] = w
    return kernel.reshape(shape).astype(np.asarray(like).dtype)


def _stages(traced, layers: List[_Layer]) -> List[List[_Layer]]:
    """Layers in program order, cut into runs in which no layer reads another's output:
    re-solving a run at once is then the same as solving its layers one by one."""
    eqn_of = {id(l.original.eqn): i for i, l in enumerate(layers)}
    upstream: Dict[jcore.Var, int] = {}            # var -> bit set of layers feeding it
    depends = [0] * len(layers)
    for eqn in traced.jaxpr.eqns:
        reach = 0
        for v in eqn.invars:
            if isinstance(v, jcore.Var):
                reach |= upstream.get(v, 0)
        i = eqn_of.get(id(eqn))
        if i is not None:
            depends[i] = reach
            reach |= 1 << i
        for v in eqn.outvars:
            upstream[v] = reach
    stages, members = [], 0
    for i, layer in enumerate(layers):
        if not stages or depends[i] & members:
            stages.append([])
            members = 0
        stages[-1].append(layer)
        members |= 1 << i
    return stages


def _touched(traced, variables, pruned: Pruned, layers: List[_Layer]) -> List[_Layer]:
    """The layers whose solution is not simply their pruned weights: those whose input
    pruning changed (a parameter of another shape or value upstream of it), and those
    whose kernel changed value without changing shape. A layer that only lost output
    columns sees the original input, and its kept columns' least-squares solution is its
    own weights: solving it would only cost a pass over the data."""
    full, now = leaves_by_path(variables), leaves_by_path(pruned.variables)
    resized, revalued = set(), set()
    for path, var in traced.param_invars():
        if path not in now or np.shape(now[path]) != np.shape(full[path]):
            resized.add(var)
        elif not np.array_equal(np.asarray(now[path]), np.asarray(full[path])):
            revalued.add(var)
    changed = resized | revalued            # then every value computed from them
    for eqn in traced.jaxpr.eqns:
        if any(isinstance(v, jcore.Var) and v in changed for v in eqn.invars):
            changed.update(eqn.outvars)

    def touched(layer: _Layer) -> bool:
        operands = layer.original.eqn.invars
        data, kernel = operands[1 - layer.original.operand], operands[layer.original.operand]
        return (isinstance(data, jcore.Var) and data in changed) or kernel in revalued
    return [layer for layer in layers if touched(layer)]


def reconstruct(fn: Callable, variables, pruned: Pruned, batches: Iterable, *example_inputs,
                ridge: float = 1e-2, include: Callable[[str], bool] = None
                ) -> Tuple[Pruned, List[LayerFit]]:
    """``pruned`` with its linear layers (and their biases) re-solved so that, on
    ``batches`` (arrays or tuples of the model's inputs), each reproduces the original
    model's layer output from the pruned model's layer input (module docstring).
    ``variables`` are the unpruned model's; ``include(path)`` limits the layers (only
    those pruning changed are solved, ``_touched``); ``ridge``
    weighs the pull towards the current weights (``_solve``). Layers are solved in
    program order, each on the inputs its re-solved predecessors give it (solving all at
    once on the un-corrected model's statistics compounds: measured on the selfie
    segmenter, every layer's error fell 2-10x and the output got worse). Returns the new
    ``Pruned`` and a ``LayerFit`` per re-solved layer."""
    batches = [as_input_tuple(b) for b in batches]
    if not batches:
        raise ValueError("reconstruct needs at least one calibration batch")
    example_inputs = example_inputs or batches[0]
    traced = flatten(fn, variables, *example_inputs)
    layers = [l for l in _touched(traced, variables, pruned,
                                  _layers(traced, variables, pruned, example_inputs))
              if include is None or include(l.original.path)]
    pruned_fn = FactoredFunction(pruned.fn, pruned.variables, [l.pruned.path for l in layers])
    current, fits = pruned.variables, []
    for stage in _stages(traced, layers):
        sums = _statistics(fn, variables, pruned_fn, stage)
        totals: Dict[str, Dict[str, np.ndarray]] = {}
        for batch in batches:
            for path, stat in sums(variables, current, batch).items():
                into = totals.setdefault(path, {})
                for name, value in stat.items():
                    into[name] = into.get(name, 0.0) + np.asarray(value, np.float64)
        now = leaves_by_path(current)
        updates = {}
        for layer in stage:
            s = totals[layer.original.path]
            kernel = now[layer.pruned.path]
            old_w = kernel_matrix(layer.pruned, kernel).astype(np.float64)
            old_b = (np.asarray(now[layer.bias_path], np.float64)
                     if layer.bias_path is not None else None)
            w, b = _solve(s, old_w, old_b, ridge)
            fits.append(LayerFit(layer.original.path, layer.bias_path,
                                 _error(s, old_w, old_b), _error(s, w, b)))
            updates[layer.pruned.path] = _as_kernel(layer.pruned, w, kernel)
            if b is not None:
                updates[layer.bias_path] = b.astype(np.asarray(now[layer.bias_path]).dtype)
        current = replace_kernels(current, {p: jnp.asarray(v) for p, v in updates.items()})
    return dataclasses.replace(pruned, variables=current), fits
