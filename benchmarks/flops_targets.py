"""Keep-sets at a FLOPs target, for comparisons that must hold FLOPs equal across methods.

A comparison at "2x fewer FLOPs" is only fair when every method's pruned model is within a
stated tolerance of 2x; the Torch-Pruning comparison refuses a row outside it. A method that
produces a family of keep-sets (a sweep of keep ratios, the thresholds of learned gates) takes
the one ``nearest_keep`` the target; when none is near enough (channel counts rounded to
multiples of 8 move the FLOPs of a 16-channel group at 28x28 in large steps),
``step_to_target`` moves one multiple of channels in one group at a time, greedily.
"""
import numpy as np


def reduction_of(setup, keep) -> float:
    """The FLOPs reduction of a keep-set by our counter (conv + dense)."""
    sizes = {gid: len(k) for gid, k in keep.items()}
    return setup.full_flops / float(setup.cost_model(sizes).matmul_flops)


def nearest_keep(setup, candidates, target):
    """The keep-set among ``(setting, keep)`` candidates whose FLOPs reduction (our
    counter, conv + dense) is nearest the target."""
    best = None
    for setting, keep in candidates:
        reduction = reduction_of(setup, keep)
        error = abs(reduction / target - 1)
        if best is None or error < best[0] - 1e-9:
            best = (error, setting, keep, reduction)
    return best[1], best[2], best[3]


def step_to_target(setup, keep, logits, multiple, min_keep, target, max_moves=12):
    """When no threshold of the gates lands within the FLOPs tolerance (a 16-channel group
    at 28x28 moves the FLOPs in large steps): greedy moves of one ``multiple`` of channels in
    one group (adding the highest-logit dropped ones, or dropping the lowest-logit kept
    ones), each the move that brings the FLOPs reduction nearest the target, until none
    does. Returns (keep, number of moves)."""
    sizes = {g.id: g.size for g in setup.groups}

    def error(k):
        return abs(reduction_of(setup, k) / target - 1)

    def moved(k, gid, step):
        count = min(max(len(k[gid]) + step, min_keep), sizes[gid])
        return {**k, gid: np.sort(np.argsort(-logits[gid], kind="stable")[:count])}
    best = error(keep)
    for moves in range(max_moves):
        options = [moved(keep, gid, step) for gid in logits for step in (multiple, -multiple)]
        scored = min(((error(k), i) for i, k in enumerate(options)), default=(best, -1))
        if scored[0] >= best - 1e-12:
            return keep, moves
        best, keep = scored[0], options[scored[1]]
    return keep, max_moves


__all__ = ["reduction_of", "nearest_keep", "step_to_target"]
