"""How good a factorization is, measured on real data by running the networks.

Two per-layer errors, both relative (||y - y*||^2 / ||y*||^2 of the linear op's output,
bias excluded since it is unchanged):

- ``isolated_errors``: each factorized layer ALONE, fed the inputs the ORIGINAL network
  gives it (what SVD and the closed form optimize; comparable between methods at equal
  rank);
- ``in_network_errors``: each factorized layer inside the FACTORIZED network, whose
  earlier layers are already approximated (what accuracy feels; what ``learned`` trains).

Both come from ``FactoredFunction``'s observer, not from the solvers' formulas, so they
also check the rewritten equations.
"""
from typing import Dict, Iterable

import jax
import jax.numpy as jnp

from lowrank.calibration import as_input_tuple
from lowrank.function import FactoredFunction, is_factor, kernels_at
from lowrank.kernels import RULES


def site_outputs(ff: FactoredFunction, variables, inputs, paths=None):
    """(model output, {path: output of that site's linear op}) in one evaluation."""
    taps = {}

    def observe(path, eqn, k, invals, outs):
        if paths is None or path in paths:
            taps[path] = outs[0]
    out = ff.run(variables, *inputs, observe=observe)
    return out, taps


def layer_loss(taps, targets) -> jnp.ndarray:
    """Mean over layers of the relative squared error of their outputs."""
    terms = [jnp.sum(jnp.square(taps[p] - targets[p])) / (jnp.sum(jnp.square(targets[p]))
                                                          + 1e-12) for p in targets]
    return jnp.mean(jnp.stack(terms))


def _accumulate(sums_fn, args, batches, paths) -> Dict[str, float]:
    num, den = dict.fromkeys(paths, 0.0), dict.fromkeys(paths, 0.0)
    for batch in batches:
        n, d = sums_fn(*args, as_input_tuple(batch))
        for p in paths:
            num[p] += float(n[p])
            den[p] += float(d[p])
    return {p: num[p] / max(den[p], 1e-30) for p in paths}


def in_network_errors(factorized, original_variables, batches: Iterable) -> Dict[str, float]:
    """Per factorized layer: its output in the factorized network vs. in the original."""
    paths = {layer.path for layer in factorized.layers}
    ff = factorized.original

    @jax.jit
    def sums(v, v0, inputs):
        _, taps = site_outputs(ff, v, inputs, paths)
        _, targets = site_outputs(ff, v0, inputs, paths)
        return ({p: jnp.sum(jnp.square(taps[p] - targets[p])) for p in paths},
                {p: jnp.sum(jnp.square(targets[p])) for p in paths})
    return _accumulate(sums, (factorized.variables, original_variables), batches, paths)


def isolated_errors(factorized, original_variables, batches: Iterable) -> Dict[str, float]:
    """Per factorized layer: its two factors applied to the original network's inputs of
    that layer vs. the original layer."""
    paths = {layer.path for layer in factorized.layers}
    ff = factorized.original

    @jax.jit
    def sums(factors, v0, inputs):
        num, den = {}, {}

        def observe(path, eqn, k, invals, outs):
            low = factors.get(path)
            if not is_factor(low):
                return
            y = RULES[eqn.primitive].apply(eqn, k, invals, low.w0, low.w1)[0]
            num[path] = jnp.sum(jnp.square(y - outs[0]))
            den[path] = jnp.sum(jnp.square(outs[0]))
        ff.run(v0, *inputs, observe=observe)
        return num, den
    factors = kernels_at(factorized.variables, paths)
    return _accumulate(sums, (factors, original_variables), batches, paths)
