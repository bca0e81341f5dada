"""An assembled architecture as a trainable model: students' BatchNorm in training mode,
their statistics recalibrated on the assembled network's own activations.

Why: each student was distilled alone on the *teacher's* activations, so its BatchNorm
statistics describe inputs it no longer sees once blocks before it are students too. DONNA
claims an assembled network needs no fine-tuning; measuring that fairly means giving the
assembled network what every baseline gets: statistics of its own activations
(``recalibrate``, forward passes only) and then the same end-to-end fine-tune with
BatchNorm trained (``trainable`` is a ``core.train.TrainableModel``).

Variables are ``{'params': [per block], 'batch_stats': [per block]}`` in network order.
Student blocks are Flax modules and run in training mode; the teacher's own blocks (the
stem, the head and every position that kept the teacher's option) are cut from its
inference-mode jaxpr and have no training mode: their parameters train, their statistics
stay the teacher's.
"""
from typing import Any, Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from core import train as train_lib
from nas.architecture import BlockLibrary
from nas.search_space import Architecture


def _split(variables, module) -> Tuple[Any, Any]:
    """One block's variables -> (trained part, statistics)."""
    if module is not None:
        return variables["params"], variables.get("batch_stats", {})
    params = {k: v for k, v in variables.items() if k.split("/")[0] == "params"}
    return params, {k: v for k, v in variables.items() if k.split("/")[0] != "params"}


def _join(params, stats, module):
    if module is not None:
        return {"params": params, **({"batch_stats": stats} if stats else {})}
    return {**params, **stats}


def trainable(library: BlockLibrary, arch: Architecture) -> train_lib.TrainableModel:
    """``arch`` assembled as a ``TrainableModel`` (see the module docstring)."""
    sequence = library.block_sequence(arch)
    modules = [option.module for option in sequence]       # None: a teacher block
    fns = [option.fn for option in sequence]
    split = [_split(option.variables, m) for option, m in zip(sequence, modules)]
    variables = {"params": [p for p, _ in split], "batch_stats": [s for _, s in split]}

    def apply_train(v, x, rng):
        stats = []
        for fn, module, params, old in zip(fns, modules, v["params"], v["batch_stats"]):
            if module is None or not old:
                x = fn(_join(params, old, module), x)
                stats.append(old)
            else:
                x, updates = module.apply(_join(params, old, module), x, train=True,
                                          mutable=["batch_stats"])
                stats.append(updates["batch_stats"])
        return x, {"batch_stats": stats}

    def apply_eval(v, x):
        for fn, module, params, stats in zip(fns, modules, v["params"], v["batch_stats"]):
            x = fn(_join(params, stats, module), x)
        return x
    return train_lib.TrainableModel(variables, apply_train, apply_eval)


def recalibrate(model: train_lib.TrainableModel, dataset, batches: int = 50,
                batch_size: int = 128, seed: int = 0) -> Dict[str, Any]:
    """``model.variables`` with the statistics re-estimated by ``batches`` forward passes in
    training mode on unaugmented training batches: BatchNorm's running averages (momentum
    0.9 in every student) then hold the assembled network's own statistics, the old ones
    weighing 0.9**batches (0.5% after 50)."""
    step = jax.jit(lambda v, x: model.apply_train(v, x, None)[1])
    variables = dict(model.variables)
    for i in range(batches):
        x, _ = dataset.train_batch(i, batch_size, seed, False)    # not augmented
        variables.update(step(variables, np.asarray(x)))
    return variables


def recalibrated_block_variables(library: BlockLibrary, arch: Architecture, dataset,
                                 batches: int = 50, batch_size: int = 128,
                                 seed: int = 0) -> List[Any]:
    """What ``recalibrate`` computes, as per-block inference variables (``block_sequence``
    order, for ``architecture.evaluate``), but block by block with functions compiled once
    per (position, option): recalibrating hundreds of sampled architectures (the
    predictors' target) then costs forward passes, not one compilation each."""
    from nas.architecture import block_fns
    sequence = library.block_sequence(arch)
    position_of = {index: p for p, index in enumerate(library.space.positions)}
    inference = block_fns(library, arch)
    variables = [option.variables for option in sequence]
    for i in range(batches):
        x = jnp.asarray(dataset.train_batch(i, batch_size, seed, False)[0])   # not augmented
        for b, option in enumerate(sequence):
            if option.module is None or not option.variables.get("batch_stats"):
                x = inference[b](variables[b], x)
                continue
            p = position_of[b]
            x, stats = library._jitted_train(p, arch[p])(variables[b], x)
            variables[b] = {**variables[b], "batch_stats": stats}
    return variables


def with_variables(model: train_lib.TrainableModel, variables) -> train_lib.TrainableModel:
    return model._replace(variables=variables)


__all__ = ["trainable", "recalibrate", "recalibrated_block_variables", "with_variables"]
