"""Structured pruning: channel groups found from the jaxpr (``find_groups``), physical
removal (``prune``), explicit differentiable masks (``masked``), importance criteria
(``pruning.importance``) and portable save/load (``pruning.portable``).

Recipe: your own Flax model, pruned by L1 magnitude to about 2x fewer FLOPs and exported to
ONNX. Given ``fn = lambda v, x: model.apply(v, x)`` (inference mode), its ``variables`` and
an input ``x``::

    import export, pruning
    from core import cost
    from pruning import importance

    groups = pruning.find_groups(fn, variables, x)             # channels removed together
    keep = importance.select(groups, importance.magnitude(groups, variables, p=1), 0.7)
    pruned = pruning.prune(fn, variables, x, keep=keep, analysis=groups)
    before = cost.count_analysis(groups.analysis).flops        # nothing analysed twice
    after = cost.count(pruned.fn, pruned.variables, x).flops   # before / after: about 2
    export.to_onnx(pruned.fn, pruned.variables, x, path="pruned.onnx")   # parity-checked

(tests/pruning/test_recipe.py runs exactly these lines.) ``keep`` names a group by its
position or by its ``key`` (``'params/Conv_0/kernel:3'``, from its members' paths):
``pruning.keep_sets.save(path, groups, keep)`` writes keys, so a saved keep-set survives
re-analysis. What ``find_groups`` returns (a list with ``.analysis``) is what ``prune``,
``masked`` and ``core.cost.count_analysis`` / ``cost.CostModel`` take, as it is.

``pruned.fn`` runs the model as it was traced: with ``train=False``, BatchNorm normalizes
with the running averages, also while ``pruned.fn`` is fine-tuned. To fine-tune with
BatchNorm in training mode, also pass ``train_fn=lambda v, x: model.apply(v, x, train=True,
mutable=["batch_stats"])`` to ``prune``: ``pruned.train_fn`` returns the outputs and the
pruned updated statistics, and ``pruning.training.trainable(pruned)`` is a
``core.train.TrainableModel`` (see ``pruning.training``).
"""
from core import xla_workarounds  # noqa: F401  (before any JAX backend exists)
from pruning import importance, keep_sets, portable, training
from pruning.groups import (ChannelGroup, GroupAnalysis, Groups, Member, analysis_of, analyze,
                            find_groups)
from pruning.masked import keep_to_masks, masked
from pruning.prune import Pruned, PruneError, prune

__all__ = ["find_groups", "analyze", "analysis_of", "ChannelGroup", "Groups", "GroupAnalysis",
           "Member", "prune", "Pruned", "PruneError", "masked", "keep_to_masks",
           "importance", "keep_sets", "portable", "training"]
from pruning.blocks import Block, BlockAnalysis, find_blocks, remove_blocks  # noqa: E402,F401
