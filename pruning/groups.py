"""``find_groups``: the channel groups of any JAX model, for structured pruning.

The analysis itself lives in ``core.channel_groups`` (cost and rewriting share it); this
is the entry point a pruning user calls. Example::

    groups = find_groups(fn, variables, x)
    for g in groups:
        print(g)          # members (param path, axis, index map), ops it passes through
    prunable = [g for g in groups if g.prunable]
"""
from typing import Callable, List

from core.channel_groups import ChannelGroup, GroupAnalysis, Member, analyze


def find_groups(fn: Callable, variables, *example_inputs) -> List[ChannelGroup]:
    """Channel groups of ``fn(variables, *example_inputs)``: prunable ones and, with the
    reason, the ones that are not (they reach an input or output, an unsupported op...)."""
    return analyze(fn, variables, *example_inputs).groups


__all__ = ["find_groups", "analyze", "ChannelGroup", "GroupAnalysis", "Member"]
