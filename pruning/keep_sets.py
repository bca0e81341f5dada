"""What a group keeps: one strict reading of ``keep`` for ``prune`` and ``keep_to_masks``.

A keep-set is easy to get subtly wrong: numpy reads ``[True, False, True]`` as the indices
``[1, 0, 1]`` and ``[0.7, 2.2]`` truncates to ``[0, 2]``, and ``-1`` silently means the last
channel. Each of these pruned the wrong channels without a word, so a keep-set is either
a boolean mask over the group's channels or a list of distinct channel indices in
``[0, size)``; anything else is an error that names the group.

A group is named in ``keep`` by its position (``group.id``) or by its ``group.key``
(``'params/conv1/kernel:3'``: derived from the paths of its members, see
``core.channel_groups.assign_keys``). Positions depend on the order the analysis found the
groups in; keys only on the model's parameters, so a saved keep-set (``save``/``load``,
the ``keep.json`` of the experiments) is written by key and survives re-analysis.
"""
import difflib
import json
from typing import Dict, Iterable, Union

import numpy as np

from core.channel_groups import ChannelGroup, GroupAnalysis

GroupName = Union[int, str]          # a group's position (id) or its key


class KeepError(ValueError):
    """A keep-set that does not name channels of its group unambiguously."""


def kept_indices(group, kept) -> np.ndarray:
    """Sorted channel indices (int64) that ``group`` keeps under ``kept``: a boolean mask of
    length ``group.size`` or distinct integer indices in ``[0, group.size)``."""
    where = f"keep[{group.id}] (group {group.id} '{group.key}', {group.size} channels)"
    values = np.asarray(kept)
    if values.dtype == object:
        raise KeepError(f"{where}: expected channel indices or a boolean mask, got {kept!r}")
    values = values.reshape(-1)
    if values.dtype == np.bool_:
        if values.shape[0] != group.size:
            raise KeepError(f"{where}: a boolean mask must have one entry per channel, "
                            f"got {values.shape[0]}")
        return np.flatnonzero(values).astype(np.int64)
    if values.size == 0:
        return np.zeros(0, np.int64)
    if not np.issubdtype(values.dtype, np.integer):
        raise KeepError(f"{where}: channel indices must be integers, got {values.dtype} "
                        f"values {values[:8].tolist()}")
    values = values.astype(np.int64)
    bad = values[(values < 0) | (values >= group.size)]
    if bad.size:
        raise KeepError(f"{where}: indices out of range [0, {group.size}): "
                        f"{bad[:8].tolist()} (negative indices are not allowed)")
    unique, counts = np.unique(values, return_counts=True)
    if unique.size != values.size:
        raise KeepError(f"{where}: duplicate indices {unique[counts > 1][:8].tolist()}")
    return unique


def group_list(groups: Union[GroupAnalysis, Iterable[ChannelGroup]]):
    """The groups of a ``GroupAnalysis``, or the given groups, as a list."""
    return list(groups.groups if isinstance(groups, GroupAnalysis) else groups)


def group_named(groups, name: GroupName) -> ChannelGroup:
    """The group at position ``name`` (an int) or with key ``name`` (a str)."""
    groups = group_list(groups)
    if isinstance(name, (int, np.integer)) and not isinstance(name, (bool, np.bool_)):
        if 0 <= name < len(groups) and groups[name].id == name:
            return groups[name]
        for g in groups:
            if g.id == name:
                return g
        raise KeyError(f"no channel group {name} (there are {len(groups)})")
    if isinstance(name, str):
        for g in groups:
            if g.key == name:
                return g
        close = difflib.get_close_matches(name, [g.key for g in groups], n=3)
        raise KeyError(f"no channel group with key {name!r}"
                       + (f"; did you mean {close}?" if close else ""))
    raise KeyError(f"a channel group is named by its position (int) or its key (str), "
                   f"got {name!r}")


def by_id(groups, keep: Dict[GroupName, object]) -> Dict[int, object]:
    """``keep`` with every group named by its position (keys resolved); naming one group
    twice (by position and by key) is an error."""
    resolved: Dict[int, object] = {}
    for name, kept in keep.items():
        group = group_named(groups, name)
        if group.id in resolved:
            raise KeyError(f"group {group.id} '{group.key}' is named twice in keep")
        resolved[group.id] = kept
    return resolved


def by_key(groups, keep: Dict[GroupName, object]) -> Dict[str, list]:
    """``keep`` named by group keys, as sorted lists of kept channel indices (for JSON)."""
    named = {}
    for name, kept in keep.items():
        group = group_named(groups, name)
        named[group.key] = [int(i) for i in kept_indices(group, kept)]
    return named


def save(path: str, groups, keep: Dict[GroupName, object]) -> None:
    """Writes ``keep`` as JSON ``{group key: [kept channel indices]}``."""
    with open(path, "w") as f:
        json.dump(by_key(groups, keep), f, indent=1)


def load(path: str) -> Dict[GroupName, np.ndarray]:
    """A keep-set written by ``save`` (by key), or an older file written by group position
    (its all-digit names are read back as positions)."""
    with open(path) as f:
        named = json.load(f)
    return {(int(name) if name.isdigit() else name): np.asarray(kept, np.int64)
            for name, kept in named.items()}
