"""Matching the library's channel groups to the fuzzer's symbols.

Each symbol of a generated architecture is on a set of parameter axes, with an index map
per axis (``layouts.index_map``); the library's group for it must have exactly those
members with those index maps. A symbol is *pinned* when it is on an input or output
axis of the model: its group must not be prunable. Three things can differ:

- a prunable library group that is no symbol (wrong members or index maps: pruning it
  would not be "the same network, narrower"), or that is a pinned symbol: a mismatch;
- a symbol the library reports as not prunable (or finds no group for): unsupported,
  with the library's reason;
- a match: the group can be pruned and compared with the narrow reference.
"""
import dataclasses
from typing import Dict, List, Optional, Set, Tuple

import numpy as np

from tests.fuzz import build
from tests.fuzz import layouts as L

Key = Tuple[str, int]                # (parameter path, axis)


@dataclasses.dataclass
class Matching:
    sym_of_group: Dict[int, int]            # library group id -> symbol id
    group_of_sym: Dict[int, int]
    pinned: Set[int]
    wrong: List[str]                        # mismatches
    not_prunable: Dict[int, str]            # symbol id -> why the library keeps it
    syms: Dict[int, L.Sym]


def oracle_members(arch: build.Arch) -> Dict[int, Dict[Key, np.ndarray]]:
    """Symbol id -> {(param path, axis): index map} from the architecture alone."""
    out: Dict[int, Dict[Key, np.ndarray]] = {}
    for path, (_, _, spec) in build.param_paths(arch).items():
        for axis, t in enumerate(spec.layouts):
            for s in L.all_symbols([t]):
                out.setdefault(s.id, {})[(path, axis)] = L.index_map(t, s)
    return out


def pinned_symbols(arch: build.Arch) -> Set[int]:
    """Symbols on the channel axis of a model input or output."""
    layouts = [i.layout for i in arch.inputs]
    for node_index, k in arch.outputs.values():
        if node_index >= 0:
            layouts.append(arch.nodes[node_index].outs[k])
        else:
            layouts.append(arch.inputs[k].layout)
    return {s.id for s in L.all_symbols(layouts)}


def _sorted_rows(m: np.ndarray) -> np.ndarray:
    return np.sort(np.asarray(m), axis=1)


def _matches(members: Dict[Key, np.ndarray], group) -> bool:
    found = {(m.path, m.axis): m.index_map for m in group.members}
    if set(found) != set(members):
        return False
    return all(members[k] is not None and np.array_equal(_sorted_rows(found[k]),
                                                         _sorted_rows(members[k]))
               for k in found)


def _describe(group) -> str:
    mems = ", ".join(f"{m.path}[{m.axis}]{m.index_map.shape}" for m in group.members)
    return f"group {group.id} (size {group.size}): {mems}"


def match(arch: build.Arch, analysis) -> Matching:
    members = oracle_members(arch)
    syms = {s.id: s for s in arch.syms if s.id in members}
    pinned = pinned_symbols(arch)
    by_keys: Dict[frozenset, List[int]] = {}
    for sid, mem in members.items():
        by_keys.setdefault(frozenset(mem), []).append(sid)
    result = Matching({}, {}, pinned, [], {}, syms)
    for group in analysis.groups:
        keys = frozenset((m.path, m.axis) for m in group.members)
        sid = next((s for s in by_keys.get(keys, ()) if syms[s].size == group.size
                    and _matches(members[s], group)), None)
        if sid is None:
            if group.prunable:
                result.wrong.append(f"prunable {_describe(group)} is no symbol of the "
                                    f"architecture")
            continue
        if group.prunable and sid in pinned:
            result.wrong.append(f"prunable {_describe(group)} is symbol s{sid}, which "
                                f"reaches a model input or output")
            continue
        if group.prunable:
            result.sym_of_group[group.id] = sid
            result.group_of_sym[sid] = group.id
        elif sid not in pinned:
            result.not_prunable[sid] = group.reason or "not prunable"
    for sid in syms:
        if sid not in pinned and sid not in result.group_of_sym:
            result.not_prunable.setdefault(sid, "no channel group matches it")
    return result


def random_keep(matching: Matching, rng: np.random.Generator, remove_prob: float = 0.0,
                only: Optional[int] = None) -> Dict[int, np.ndarray]:
    """A keep-set over the matched symbols: ``{symbol id: kept channels}``; with
    ``remove_prob`` some lose every channel; ``only`` empties just that symbol."""
    keep = {}
    for sid in sorted(matching.group_of_sym):
        size = matching.syms[sid].size
        if only is not None:
            if sid == only:
                keep[sid] = np.zeros(0, np.int64)
            continue
        if rng.random() < remove_prob:
            keep[sid] = np.zeros(0, np.int64)
        else:
            k = int(rng.integers(1, size + 1))
            keep[sid] = np.sort(rng.choice(size, k, replace=False))
    return keep
