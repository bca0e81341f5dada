"""The learned step: training the factors (from the closed form) lowers the error of the
factorized layers inside the factorized network, on held-out data."""
import jax.numpy as jnp
import numpy as np
import pytest

import lowrank
from core import trace
from models import zoo


def _batches(seed, shape, count, n=8):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=(n,) + shape), jnp.float32) for _ in range(count)]


@pytest.mark.slow
def test_learned_refinement_lowers_in_network_layer_error():
    fn, variables, x = zoo.instantiate("mixer")
    sites, _ = lowrank.find_sites(trace.trace(fn, variables, x))
    ranks = {s.path: max(1, s.geometry.full_rank // 3) for s in sites}
    train = _batches(0, x.shape[1:], 6, n=16)
    held_out = _batches(1, x.shape[1:], 2)
    closed = lowrank.factorize(fn, variables, x, ranks=ranks, method="data", data=train)
    learned = lowrank.refine(closed, variables, train, steps=80, learning_rate=5e-3)
    assert learned.method == "learned"
    assert learned.refinement["loss_last"] < learned.refinement["loss_first"]
    before = lowrank.in_network_errors(closed, variables, held_out)
    after = lowrank.in_network_errors(learned, variables, held_out)
    assert np.mean(list(after.values())) < 0.95 * np.mean(list(before.values())), (before, after)
    # The factorize entry point runs the same refinement.
    direct = lowrank.factorize(fn, variables, x, ranks=ranks, method="learned", data=train,
                               learn={"steps": 5, "distill_weight": 0.5})
    assert direct.method == "learned" and direct.refinement["steps"] == 5
