"""Which channels to keep: importance scores per group, and keep-sets for a target.

A group's channel lives in several parameters at once (the conv that makes it, its
BatchNorm, the next layer's kernel, every residual partner...), so every criterion scores a
channel over *all* members of its group, through their index maps (a head owns ``head_dim``
positions of a fused projection; a concatenated channel one row of the next kernel):

- ``magnitude``: L1 or L2 norm of all the channel's weights;
- ``bn_scale``: |scale| of the normalization layers among the members (network slimming);
- ``taylor``: first-order Taylor estimate of the loss change when the channel's weights are
  zeroed, ``|sum_w grad * w|`` over all its weights, on a batch;
- ``random``: a baseline.

Scores are ``{group_id: array of the group's size}``. ``select`` turns them into a keep-set
``{group_id: kept indices}`` for ``pruning.prune`` / ``pruning.masked``: a fraction of each
group (``scope='local'``) or one threshold over scores normalized within each group
(``scope='global'``), with kept counts rounded to a multiple (NPUs and onnxruntime's blocked
layouts want multiples of 8).
"""
from typing import Callable, Dict, Optional, Sequence

import jax
import numpy as np

from core.channel_groups import ChannelGroup, Member
from core.trace import path_to_str

Scores = Dict[int, np.ndarray]


def _leaves_by_path(variables) -> Dict[str, np.ndarray]:
    return {path_to_str(p): leaf
            for p, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}


def _weight_members(group: ChannelGroup):
    """The trainable members: those in the ``params`` collection when there is one."""
    members = [m for m in group.members if m.path.split("/")[0] == "params"]
    return members or list(group.members)


def member_slices(member: Member, array) -> np.ndarray:
    """``(group size, rest)``: the weights of each channel of the group in one member."""
    moved = np.moveaxis(np.asarray(array, np.float64), member.axis, 0)
    per_channel = moved[member.index_map]            # (channels, multiplicity, ...)
    return per_channel.reshape(per_channel.shape[0], -1)


def _prunable(groups: Sequence[ChannelGroup]):
    return [g for g in groups if g.prunable]


def magnitude(groups: Sequence[ChannelGroup], variables, p: int = 1) -> Scores:
    """L``p`` norm of each channel's weights over all members of its group."""
    leaves = _leaves_by_path(variables)
    scores = {}
    for g in _prunable(groups):
        total = np.zeros(g.size)
        for m in _weight_members(g):
            total += np.sum(np.abs(member_slices(m, leaves[m.path])) ** p, axis=1)
        scores[g.id] = total ** (1.0 / p)
    return scores


def is_norm_scale(member: Member, leaves) -> bool:
    """A 1-D ``scale`` parameter (Flax's BatchNorm/LayerNorm/GroupNorm/RMSNorm name)."""
    return (member.path.rsplit("/", 1)[-1] == "scale" and np.ndim(leaves[member.path]) == 1
            and member.path.split("/")[0] != "batch_stats")


def bn_scale(groups: Sequence[ChannelGroup], variables) -> Scores:
    """Sum of |scale| of the normalization layers in each group; groups without one fall
    back to the L1 magnitude, scaled to the same mean so both rank together globally."""
    leaves = _leaves_by_path(variables)
    fallback = None
    scores = {}
    for g in _prunable(groups):
        members = [m for m in g.members if is_norm_scale(m, leaves)]
        if members:
            scores[g.id] = sum(np.abs(member_slices(m, leaves[m.path])).sum(axis=1)
                               for m in members)
        else:
            if fallback is None:
                fallback = magnitude(groups, variables, 1)
            scores[g.id] = fallback[g.id] / max(np.mean(fallback[g.id]), 1e-12)
    return scores


def taylor(groups: Sequence[ChannelGroup], variables, loss_fn: Callable) -> Scores:
    """``|sum grad * w|`` over each channel's weights, with ``grad = d loss_fn(variables)``:
    the first-order change of the loss when the channel is removed."""
    grads = jax.grad(loss_fn)(variables)
    leaves, grad_leaves = _leaves_by_path(variables), _leaves_by_path(grads)
    scores = {}
    for g in _prunable(groups):
        total = np.zeros(g.size)
        for m in _weight_members(g):
            w = member_slices(m, leaves[m.path])
            dw = member_slices(m, grad_leaves[m.path])
            total += np.sum(w * dw, axis=1)
        scores[g.id] = np.abs(total)
    return scores


def random(groups: Sequence[ChannelGroup], seed: int = 0) -> Scores:
    rng = np.random.default_rng(seed)
    return {g.id: rng.random(g.size) for g in _prunable(groups)}


def round_count(count: float, size: int, multiple: int = 1, min_keep: int = 1) -> int:
    """Kept channels rounded to a multiple, within ``[min(min_keep, size), size]``; a group
    smaller than the multiple is kept whole."""
    if multiple > 1:
        if size <= multiple:
            return size
        count = multiple * max(1, int(np.round(count / multiple)))
    count = int(np.round(count))
    return int(min(size, max(min(min_keep, size), count)))


def normalized(scores: Scores) -> Scores:
    """Scores divided by their group's mean, so groups of different scale compare."""
    return {gid: s / max(float(np.mean(s)), 1e-12) for gid, s in scores.items()}


def select(groups: Sequence[ChannelGroup], scores: Scores, keep_ratio: float,
           scope: str = "local", multiple: int = 1, min_keep: int = 1,
           only: Optional[Sequence[int]] = None) -> Dict[int, np.ndarray]:
    """Keep-set with about ``keep_ratio`` of the channels of the scored groups (or those in
    ``only``): the best of each group (``'local'``), or the best overall after normalizing
    within groups (``'global'``); counts rounded by ``round_count``."""
    ids = [gid for gid in scores if only is None or gid in set(only)]
    sizes = {g.id: g.size for g in groups}
    if scope == "local":
        counts = {gid: keep_ratio * sizes[gid] for gid in ids}
    elif scope == "global":
        norm = normalized({gid: scores[gid] for gid in ids})
        pooled = np.concatenate([norm[gid] for gid in ids]) if ids else np.zeros(0)
        n_keep = int(np.round(keep_ratio * len(pooled)))
        if n_keep >= len(pooled):
            threshold = -np.inf
        else:
            threshold = np.sort(pooled)[::-1][max(n_keep - 1, 0)] if n_keep else np.inf
        counts = {gid: float(np.sum(norm[gid] >= threshold)) for gid in ids}
    else:
        raise ValueError(f"scope must be 'local' or 'global', got {scope!r}")
    keep = {}
    for gid in ids:
        k = round_count(counts[gid], sizes[gid], multiple, min_keep)
        order = np.argsort(-np.asarray(scores[gid]), kind="stable")
        keep[gid] = np.sort(order[:k])
    return keep


CRITERIA = {"l1": lambda groups, variables, **_: magnitude(groups, variables, 1),
            "l2": lambda groups, variables, **_: magnitude(groups, variables, 2),
            "bn_scale": lambda groups, variables, **_: bn_scale(groups, variables),
            "taylor": lambda groups, variables, loss_fn=None, **_: taylor(groups, variables,
                                                                          loss_fn),
            "random": lambda groups, variables, seed=0, **_: random(groups, seed),
            "compensated": lambda groups, variables, fn=None, batches=None, **_:
                _compensated(groups, fn, variables, batches)}


def _compensated(groups, fn, variables, batches) -> Scores:
    """``pruning.compensated_importance`` (needs the model ``fn`` and calibration
    ``batches``; imported here lazily, it builds on this module)."""
    if fn is None or not batches:
        raise ValueError("criterion 'compensated' needs fn= and batches= (calibration data)")
    from pruning.compensated_importance import compensated
    return compensated(groups, fn, variables, batches)


def scores_for(criterion: str, groups: Sequence[ChannelGroup], variables, **kwargs) -> Scores:
    """``scores_for('l2', groups, variables)``; ``taylor`` needs ``loss_fn=``,
    ``compensated`` needs ``fn=`` and ``batches=``."""
    if criterion not in CRITERIA:
        raise KeyError(f"unknown criterion {criterion!r}; choose from {sorted(CRITERIA)}")
    return CRITERIA[criterion](groups, variables, **kwargs)
