"""Fine-tuning a pruned model whose BatchNorm must run in training mode.

``Pruned.fn`` runs the model exactly as it was traced: a Flax model traced with
``train=False`` normalizes with the running averages (BatchNorm in inference mode), and
fine-tuning ``Pruned.fn`` (``core.train.frozen_model``) trains the weights under frozen
statistics. That is often what one wants right after pruning, but a model that must
re-estimate its statistics (heavily pruned, or trained further on other data) needs the
training-mode function too. Give it to ``prune``::

    train_fn = lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"])
    pruned = pruning.prune(fn, variables, x, keep=keep, train_fn=train_fn)
    logits, updates = pruned.train_fn(pruned.variables, x)   # batch statistics, pruned
    model = pruning.training.trainable(pruned)               # core.train.train(model, ...)

``pruned.train_fn`` is the training-mode model pruned like ``pruned.fn``: it normalizes
with the statistics of the batch and returns the updated running averages, narrowed to the
kept channels, so ``{**pruned.variables, **updates}`` is again a valid input of
``pruned.fn``. It is analysed with its updates left out of its outputs (an output's
channels cannot be pruned, and the running averages are outputs of a training step); the
update equations stay in the trace, so the rewrite narrows them with the channels they
follow. Groups are matched between the two analyses by their keys, never by position.
"""
from typing import Callable, Dict, Sequence, Tuple

import numpy as np

from core import train as train_lib
from core.channel_groups import GroupAnalysis, analyze
from pruning import keep_sets
from pruning.shape_rules import PruneError


def _outputs_only(train_fn: Callable) -> Callable:
    def outputs(variables, *inputs):
        return train_fn(variables, *inputs)[0]
    return outputs


def _same_group(group, other) -> bool:
    members = lambda g: sorted((m.path, m.axis) for m in g.members)   # noqa: E731
    return group.size == other.size and members(group) == members(other)


def training_analysis(train_fn: Callable, variables, example_inputs: Sequence,
                      analysis: GroupAnalysis, keep: Dict[int, np.ndarray]
                      ) -> Tuple[GroupAnalysis, Dict[int, np.ndarray]]:
    """The analysis of ``train_fn`` (its outputs, not its updates) and ``keep`` (by
    position in ``analysis``) by position in it, matched by group key."""
    trained = analyze(_outputs_only(train_fn), variables, *example_inputs)
    translated = {}
    for gid, kept in keep.items():
        group = analysis.groups[gid]
        try:
            other = keep_sets.group_named(trained, group.key)
        except KeyError:
            other = None
        if other is None or not _same_group(group, other) or not other.prunable:
            raise PruneError(
                f"group {gid} '{group.key}' has no prunable counterpart in the training-mode "
                f"model (train_fn): its channels are grouped differently there")
        translated[other.id] = kept
    return trained, translated


def trainable(pruned) -> train_lib.TrainableModel:
    """``pruned`` as ``core.train``'s ``TrainableModel``: training steps run
    ``pruned.train_fn`` (BatchNorm in training mode, statistics updated), evaluation runs
    ``pruned.fn`` with the updated statistics."""
    if pruned.train_fn is None:
        raise ValueError("prune(..., train_fn=...) was not given a training-mode function; "
                         "core.train.frozen_model(pruned.fn, pruned.variables) fine-tunes "
                         "with the statistics frozen")
    train_fn = pruned.train_fn

    def apply_train(variables, x, rng):
        outputs, updates = train_fn(variables, x)
        return outputs, dict(updates)
    return train_lib.TrainableModel(pruned.variables, apply_train, pruned.fn)
