"""The fuzzer's own channel algebra: the oracle the library's channel groups are checked
against, written independently of ``core.channel_types``.

A generated architecture names every channel axis with a *layout* over symbols: a ``Sym``
(a set of channels that the architecture says must be removed together: a conv's
outputs and everything added to them), ``Const(n)`` (not channels: input features, classes,
kernel windows, stacked layers), ``Cat(parts)`` (parts laid end to end: a concatenation, the
pieces of a split) or ``Prod(factors)`` (row-major flattening: heads x head_dim, conv groups
x channels per group). A symbol may be *refined* into a Cat or Prod of new symbols while the
architecture is generated (a split, a grouped conv or GroupNorm on an existing width); a
layout is always read through ``resolve``.

Given how many channels each symbol keeps, ``kept_positions`` says which positions of an axis
survive (how the fuzzer slices parameters for the independently built narrow model) and
``index_map`` gives, for one symbol, the positions each of its channels occupies (what a
library group member's index map must equal).
"""
import dataclasses
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np


class Sym:
    """A prunable set of channels; ``refined`` replaces it by a finer layout."""
    __slots__ = ("id", "size", "refined")

    def __init__(self, id: int, size: int):
        self.id = id
        self.size = size
        self.refined: Optional["Layout"] = None

    def __repr__(self):
        return f"s{self.id}" if self.refined is None else f"s{self.id}={self.refined!r}"


@dataclasses.dataclass(frozen=True)
class Const:
    """An axis that holds no channels (fixed size)."""
    n: int

    def __repr__(self):
        return f"{self.n}"


@dataclasses.dataclass(frozen=True)
class Cat:
    parts: tuple

    def __repr__(self):
        return "Cat(" + ", ".join(map(repr, self.parts)) + ")"


@dataclasses.dataclass(frozen=True)
class Prod:
    factors: tuple

    def __repr__(self):
        return "Prod(" + ", ".join(map(repr, self.factors)) + ")"


Layout = Union[Sym, Const, Cat, Prod]
Sizes = Dict[int, int]          # symbol id -> channel count


def resolve(layout: Layout) -> Layout:
    """Follows refinements; nested Cats and Prods are flattened, Const(1) factors dropped."""
    if isinstance(layout, Sym):
        return layout if layout.refined is None else resolve(layout.refined)
    if isinstance(layout, Const):
        return layout
    if isinstance(layout, Cat):
        parts = []
        for p in layout.parts:
            r = resolve(p)
            parts.extend(r.parts if isinstance(r, Cat) else (r,))
        return parts[0] if len(parts) == 1 else Cat(tuple(parts))
    factors = []
    for f in layout.factors:
        r = resolve(f)
        if isinstance(r, Const) and r.n == 1:
            continue
        factors.extend(r.factors if isinstance(r, Prod) else (r,))
    if not factors:
        return Const(1)
    return factors[0] if len(factors) == 1 else Prod(tuple(factors))


def size(layout: Layout, sizes: Optional[Sizes] = None) -> int:
    """Axis size when symbol ``s`` has ``sizes[s.id]`` channels (default: full size)."""
    layout = resolve(layout)
    if isinstance(layout, Sym):
        return layout.size if sizes is None else sizes.get(layout.id, layout.size)
    if isinstance(layout, Const):
        return layout.n
    values = [size(p, sizes) for p in (layout.parts if isinstance(layout, Cat)
                                       else layout.factors)]
    return int(sum(values)) if isinstance(layout, Cat) else int(np.prod(values, dtype=np.int64))


def symbols(layout: Layout) -> Iterator[Sym]:
    """Unrefined symbols of a layout, in order (repeats possible)."""
    layout = resolve(layout)
    if isinstance(layout, Sym):
        yield layout
    elif isinstance(layout, (Cat, Prod)):
        for p in (layout.parts if isinstance(layout, Cat) else layout.factors):
            yield from symbols(p)


def kept_positions(layout: Layout, keep: Dict[int, np.ndarray]) -> np.ndarray:
    """Positions of a full-size axis that survive when symbol ``s`` keeps channels
    ``keep[s.id]`` (missing: all), in the order the narrow axis holds them."""
    layout = resolve(layout)
    if isinstance(layout, Sym):
        kept = keep.get(layout.id)
        return np.arange(layout.size) if kept is None else np.asarray(kept, np.int64)
    if isinstance(layout, Const):
        return np.arange(layout.n)
    if isinstance(layout, Cat):
        out, offset = [], 0
        for p in layout.parts:
            out.append(kept_positions(p, keep) + offset)
            offset += size(p)
        return np.concatenate(out).astype(np.int64)
    index = np.zeros(1, np.int64)
    for f in layout.factors:
        index = (index[:, None] * size(f) + kept_positions(f, keep)[None, :]).reshape(-1)
    return index


def _owner(layout: Layout, sym: Sym) -> np.ndarray:
    """For each position of the axis, the channel of ``sym`` it belongs to (-1: none)."""
    if isinstance(layout, Sym):
        return np.arange(layout.size) if layout is sym else np.full(layout.size, -1)
    if isinstance(layout, Const):
        return np.full(layout.n, -1)
    if isinstance(layout, Cat):
        return np.concatenate([_owner(p, sym) for p in layout.parts])
    out = np.full(1, -1)
    for f in layout.factors:
        inner = _owner(f, sym)
        out = np.where(out[:, None] >= 0, out[:, None], inner[None, :]).reshape(-1)
    return out


def index_map(layout: Layout, sym: Sym) -> Optional[np.ndarray]:
    """``(sym.size, multiplicity)`` positions of each channel of ``sym`` along the axis,
    rows sorted; ``None`` when the symbol is not on the axis."""
    owner = _owner(resolve(layout), sym)
    if not np.any(owner >= 0):
        return None
    rows = [np.flatnonzero(owner == c) for c in range(sym.size)]
    if len({len(r) for r in rows}) != 1:
        return None
    return np.stack(rows)


def describe(layouts: Sequence[Layout]) -> str:
    return "(" + ", ".join(repr(resolve(t)) for t in layouts) + ")"


def all_symbols(layouts: Sequence[Layout]) -> List[Sym]:
    seen, out = set(), []
    for t in layouts:
        for s in symbols(t):
            if s.id not in seen:
                seen.add(s.id)
                out.append(s)
    return out
