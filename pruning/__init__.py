"""Structured pruning: channel groups found from the jaxpr (``find_groups``)."""
from pruning.groups import ChannelGroup, GroupAnalysis, Member, analyze, find_groups

__all__ = ["find_groups", "analyze", "ChannelGroup", "GroupAnalysis", "Member"]
