"""``find_groups``: the channel groups of any JAX model, for structured pruning.

The analysis itself lives in ``core.channel_groups`` (cost and rewriting share it); this
is the entry point a pruning user calls. What it returns is the one analysis object the
rest of the package takes as it is (nothing is analysed again)::

    groups = find_groups(fn, variables, x)
    for g in groups:
        print(g)          # key, members (param path, axis, index map), ops it passes through
    prunable = [g for g in groups if g.prunable]
    groups["params/conv1/kernel:3"]                          # a group by its key
    pruned = prune(fn, variables, x, keep=keep, analysis=groups)
    g = masked(fn, groups)
    flops = core.cost.count_analysis(groups.analysis).flops  # or cost.CostModel(groups.analysis)
"""
from typing import Callable, Optional, Sequence, Union

from core.channel_groups import ChannelGroup, GroupAnalysis, Member, analyze
from pruning import keep_sets


class Groups(list):
    """The list of a model's ``ChannelGroup`` (``groups[i].id == i``) with the analysis
    behind it (``groups.analysis``); ``groups[key]`` finds a group by its key."""

    def __init__(self, analysis: GroupAnalysis):
        super().__init__(analysis.groups)
        self.analysis = analysis

    def __getitem__(self, name: Union[int, slice, str]):
        if isinstance(name, str):
            return keep_sets.group_named(self, name)
        return super().__getitem__(name)

    def prunable(self):
        return [g for g in self if g.prunable]


def analysis_of(groups: Union[GroupAnalysis, Sequence[ChannelGroup], None]
                ) -> Optional[GroupAnalysis]:
    """The analysis behind what ``find_groups`` returned (its list, or any list of its
    groups), or the ``GroupAnalysis`` itself; None stays None."""
    if groups is None or isinstance(groups, GroupAnalysis):
        return groups
    found = getattr(groups, "analysis", None)
    if isinstance(found, GroupAnalysis):
        return found
    groups = list(groups)
    if not groups or groups[0].analysis is None:
        raise ValueError("expected the groups of find_groups (or their GroupAnalysis)")
    return groups[0].analysis


def find_groups(fn: Callable, variables, *example_inputs) -> Groups:
    """Channel groups of ``fn(variables, *example_inputs)``: prunable ones and, with the
    reason, the ones that are not (they reach an input or output, an unsupported op...)."""
    return Groups(analyze(fn, variables, *example_inputs))


__all__ = ["find_groups", "analyze", "analysis_of", "Groups", "ChannelGroup", "GroupAnalysis",
           "Member"]
