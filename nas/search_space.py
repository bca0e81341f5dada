"""The search space as data: which teacher blocks are searched, and the student choices for
each, with option 0 of every position being the teacher's own block.

An architecture is a tuple of option indices, one per searched position, so it can be
sampled, mutated, crossed over, hashed and written to JSON without knowing what the
blocks are. Choices come from a config: an explicit list of ``BlockChoice`` fields, or a
grid (type x depth x kernel x expansion x width x activation x SE) from which a fixed,
seeded, type-stratified sample is drawn per position, so a large grid stays affordable.
"""
import dataclasses
import itertools
from typing import Dict, List, Sequence, Tuple

import numpy as np

from nas.student_blocks import BlockChoice, stride_between
from nas.teacher_blocks import TeacherBlock

TEACHER = BlockChoice(type="teacher")
Architecture = Tuple[int, ...]


@dataclasses.dataclass
class SearchSpace:
    positions: Tuple[int, ...]                          # indices of searched teacher blocks
    options: Tuple[Tuple[BlockChoice, ...], ...]        # per position; options[p][0] is TEACHER

    @property
    def sizes(self) -> Tuple[int, ...]:
        return tuple(len(o) for o in self.options)

    @property
    def size(self) -> int:
        return int(np.prod([len(o) for o in self.options], dtype=np.float64))

    def teacher(self) -> Architecture:
        return tuple(0 for _ in self.positions)

    def choices(self, arch: Architecture) -> List[BlockChoice]:
        return [self.options[p][i] for p, i in enumerate(arch)]

    def sample(self, rng: np.random.Generator, n: int, include_teacher: bool = False,
               exclude=(), accept=None) -> List[Architecture]:
        """``n`` distinct architectures drawn uniformly (plus the all-teacher one if asked);
        with ``accept`` (arch -> bool) only those it accepts, e.g. in a latency range."""
        seen = set(map(tuple, exclude))
        out = []
        if include_teacher and self.teacher() not in seen:
            out.append(self.teacher())
            seen.add(self.teacher())
        tries = 0
        while len(out) < n and tries < 100 * n:
            tries += 1
            arch = tuple(int(rng.integers(s)) for s in self.sizes)
            if arch not in seen:
                seen.add(arch)
                if accept is None or accept(arch):
                    out.append(arch)
        return out

    def students(self) -> List[Tuple[int, BlockChoice]]:
        """Every (position, choice) that needs training (teacher options excluded)."""
        return [(p, c) for p, opts in enumerate(self.options) for c in opts if c != TEACHER]

    def as_dict(self):
        return {"positions": list(self.positions),
                "options": [[c.as_dict() for c in opts] for opts in self.options]}


def grid_choices(grid: Dict[str, Sequence], count: int, seed: int) -> List[BlockChoice]:
    """``count`` distinct choices from the product of the grid, cycling over block types so
    every type is represented."""
    keys = [k for k in ("depth", "kernel", "expansion", "width", "activation", "se", "end")
            if k in grid]
    by_type = {t: [BlockChoice(type=t, **dict(zip(keys, values)))
                   for values in itertools.product(*(grid[k] for k in keys))]
               for t in grid["type"]}
    rng = np.random.default_rng(seed)
    for t in by_type:
        rng.shuffle(by_type[t])
    chosen: List[BlockChoice] = []
    for i in itertools.count():
        if len(chosen) >= count or not any(by_type.values()):
            break
        pool = by_type[list(by_type)[i % len(by_type)]]
        if pool:
            candidate = pool.pop()
            if candidate not in chosen:
                chosen.append(candidate)
    return chosen


def _valid(choice: BlockChoice, block: TeacherBlock) -> bool:
    try:
        stride = stride_between(block.in_shape, block.out_shape)
    except ValueError:
        return False
    if choice.type == "mixer" and stride > 1 and block.in_shape[1] % stride:
        return False
    return True


def searchable_positions(blocks: Sequence[TeacherBlock]) -> Tuple[int, ...]:
    """Blocks that map a feature map to a feature map (the stem and head stay the teacher's)."""
    return tuple(i for i, b in enumerate(blocks) if i > 0 and len(b.in_shape) == 4
                 and len(b.out_shape) == 4)


def build_space(blocks: Sequence[TeacherBlock], space_cfg) -> SearchSpace:
    """From a config section: ``positions`` ('auto' or a list of block names or indices),
    and ``choices`` (a list of BlockChoice field dicts) or ``grid`` + ``per_block``."""
    positions = space_cfg.get("positions", "auto")
    if positions == "auto":
        positions = searchable_positions(blocks)
    else:
        names = [b.name for b in blocks]
        positions = tuple(names.index(p) if isinstance(p, str) else int(p) for p in positions)
    options = []
    for k, index in enumerate(positions):
        if space_cfg.get("choices"):
            candidates = [BlockChoice(**dict(c)) for c in space_cfg["choices"]]
        else:
            candidates = grid_choices(dict(space_cfg["grid"]), int(space_cfg["per_block"]),
                                      int(space_cfg.get("seed", 0)) + k)
        options.append((TEACHER,) + tuple(c for c in candidates if _valid(c, blocks[index])))
    return SearchSpace(tuple(positions), tuple(options))


__all__ = ["SearchSpace", "Architecture", "TEACHER", "grid_choices", "build_space",
           "searchable_positions"]
