"""Structured pruning: channel groups found from the jaxpr (``find_groups``), physical
removal (``prune``), explicit differentiable masks (``masked``), importance criteria
(``pruning.importance``) and portable save/load (``pruning.portable``)."""
from core import xla_workarounds  # noqa: F401  (before any JAX backend exists)
from pruning import importance, portable
from pruning.groups import ChannelGroup, GroupAnalysis, Member, analyze, find_groups
from pruning.masked import keep_to_masks, masked
from pruning.prune import Pruned, PruneError, prune

__all__ = ["find_groups", "analyze", "ChannelGroup", "GroupAnalysis", "Member", "prune",
           "Pruned", "PruneError", "masked", "keep_to_masks",
           "importance", "portable"]
from pruning.blocks import Block, BlockAnalysis, find_blocks, remove_blocks  # noqa: E402,F401
