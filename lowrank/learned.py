"""Learned low-rank factors: start from the closed form, train to match the original layers.

The closed form is optimal for each layer ALONE, on the inputs the ORIGINAL network feeds
it. Inside the factorized network every layer receives inputs already perturbed by the
layers before it, and errors compound. ``refine`` trains all factors jointly (optax adam,
cosine decay) so that each factorized layer's output, computed in the factorized network,
matches the original layer's output on the same real inputs:

    loss = mean_l ||y_l - y*_l||^2 / ||y*_l||^2  +  distill_weight * KD(logits, logits*)

The second term is optional end-to-end distillation of the model's outputs (Hinton's KD
on softened logits, ``core.losses``). Only the factors are trained; everything else is
frozen, so the result is still "the original network with thin kernels".
"""
import dataclasses
from typing import List

import jax
import jax.numpy as jnp
import numpy as np
import optax

from core import losses
from lowrank.calibration import as_input_tuple
from lowrank.function import kernels_at, replace_kernels
from lowrank.metrics import layer_loss, site_outputs


def refine(factorized, original_variables, data, steps: int = 200,
           learning_rate: float = 1e-3, distill_weight: float = 0.0,
           temperature: float = 4.0, seed: int = 0, log_every: int = 0):
    """Trains the factors of ``factorized`` on ``data`` (a list of input batches, cycled);
    returns a new ``Factorized`` with ``refinement`` = {'steps', 'loss_first', 'loss_last'}."""
    data = [as_input_tuple(b) for b in data]
    if not data:
        raise ValueError("learned refinement needs training batches")
    paths = [layer.path for layer in factorized.layers]
    ff = factorized.original
    trainable = kernels_at(factorized.variables, paths)
    frozen = factorized.variables
    schedule = optax.cosine_decay_schedule(learning_rate, max(steps, 1), alpha=0.05)
    tx = optax.adam(schedule)
    opt_state = tx.init(trainable)
    path_set = set(paths)

    def objective(factors, inputs):
        out, taps = site_outputs(ff, replace_kernels(frozen, factors), inputs, path_set)
        ref, targets = site_outputs(ff, original_variables, inputs, path_set)
        targets = jax.lax.stop_gradient(targets)
        loss = layer_loss(taps, targets)
        if distill_weight:
            loss = loss + distill_weight * losses.kd_logits_loss(
                out, jax.lax.stop_gradient(ref), temperature)
        return loss

    @jax.jit
    def step(factors, opt_state, inputs):
        loss, grads = jax.value_and_grad(objective)(factors, inputs)
        updates, opt_state = tx.update(grads, opt_state, factors)
        return optax.apply_updates(factors, updates), opt_state, loss

    history: List[float] = []
    order = np.random.default_rng(seed).permutation(max(steps, 1)) % len(data)
    for i in range(steps):
        trainable, opt_state, loss = step(trainable, opt_state, data[int(order[i])])
        history.append(float(loss))
        if log_every and (i + 1) % log_every == 0:
            print(f"learned low-rank step {i + 1}/{steps}: loss {np.mean(history[-log_every:]):.5f}")
    refined = dataclasses.replace(
        factorized, variables=replace_kernels(frozen, trainable), method="learned",
        refinement={"steps": steps, "learning_rate": learning_rate,
                    "distill_weight": distill_weight,
                    "loss_first": history[0] if history else None,
                    "loss_last": float(np.mean(history[-10:])) if history else None})
    return refined
