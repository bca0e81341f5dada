"""Students that start from their teacher block: copied where the shapes agree, and narrowed
to the student's widths by the teacher's L1-ranked channels where the student is thinner.

DONNA's students learn from random initialisation, which wastes most of a short
distillation on relearning what the teacher block already knows. A student that is layer for
layer the teacher block (``plain``, depth 2, kernel 3, ReLU is a ResNet basic block with the
same parameter names) can start as the teacher; one that is the same block with a narrower
inner width (``width`` 0.5) can start as the teacher block *pruned* to that width. Which
channels go together (a conv's outputs, its BatchNorm, the next conv's inputs) is what the
channel groups of ``pruning.find_groups`` say, from the teacher block's jaxpr, so no block type
needs its own slicing code: each prunable group of the teacher block keeps its
highest-L1 channels (``pruning.importance.magnitude``), as many as the student's matching
parameter axis holds, and ``pruning.prune`` cuts them out. Leaves are then matched by path
after the teacher's module name (``params/stage0_block1/conv1/kernel`` ->
``params/conv1/kernel``) and copied where the shapes agree; the rest keep the student's own
initialisation (another kernel size, another block type).
"""
import dataclasses
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from core.trace import path_to_str
from pruning import find_groups, importance, prune


@dataclasses.dataclass
class TeacherStart:
    """What ``init_from_teacher`` did: the student's variables, how many of its leaves came
    from the teacher, and per narrowed group of the teacher block the channels kept."""
    variables: object
    copied: int
    kept: Dict[str, np.ndarray]


def _student_path(teacher_path: str) -> str:
    """``'params/stage0_block1/conv1/kernel'`` -> ``'params/conv1/kernel'``."""
    parts = teacher_path.split("/")
    return "/".join([parts[0]] + parts[2:])


def _student_shapes(student_variables) -> Dict[str, Tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(student_variables)[0]
    return {path_to_str(p): tuple(leaf.shape) for p, leaf in flat}


def _student_width(group, shapes: Dict[str, Tuple[int, ...]]):
    """How many of ``group``'s channels the student holds: the size of the student's matching
    parameter axes when they agree (None when no member has a counterpart, or they differ)."""
    sizes = set()
    for member in group.members:
        shape = shapes.get(_student_path(member.path))
        if shape is None or not member.is_whole_axis or len(shape) <= member.axis:
            continue
        sizes.add(shape[member.axis])
    return sizes.pop() if len(sizes) == 1 else None


def narrowed_teacher(block, student_variables):
    """The teacher block's variables pruned to the student's widths, and the kept channels
    per group key (only the groups the student holds fewer channels of)."""
    x = jnp.zeros((1,) + tuple(block.in_shape[1:]), jnp.float32)
    groups = find_groups(block.fn, block.variables, x)
    shapes = _student_shapes(student_variables)
    scores = importance.magnitude(groups, block.variables, p=1)
    keep = {}
    for group in groups.prunable():
        width = _student_width(group, shapes)
        if width is not None and 0 < width < group.size:
            order = np.argsort(-scores[group.id], kind="stable")
            keep[group.id] = np.sort(order[:width])
    if not keep:
        return dict(block.variables), {}
    pruned = prune(block.fn, block.variables, x, keep=keep, analysis=groups)
    keys = {g.id: g.key for g in groups}
    return dict(pruned.variables), {keys[gid]: kept for gid, kept in keep.items()}


def init_from_teacher(student_variables, block) -> TeacherStart:
    """``student_variables`` with every leaf the (narrowed) teacher block has at the same
    path and shape replaced by the teacher's; see the module docstring."""
    teacher, kept = narrowed_teacher(block, student_variables)
    by_path = {_student_path(path): value for path, value in teacher.items()}
    flat, tree = jax.tree_util.tree_flatten_with_path(student_variables)
    leaves, copied = [], 0
    for key_path, leaf in flat:
        value = by_path.get(path_to_str(key_path))
        if value is not None and tuple(value.shape) == tuple(leaf.shape):
            leaves.append(jnp.asarray(value, leaf.dtype))
            copied += 1
        else:
            leaves.append(leaf)
    return TeacherStart(jax.tree_util.tree_unflatten(tree, leaves), copied, kept)


__all__ = ["TeacherStart", "init_from_teacher", "narrowed_teacher"]
