"""What a group keeps: one strict reading of ``keep`` for ``prune`` and ``keep_to_masks``.

A keep-set is easy to get subtly wrong: numpy reads ``[True, False, True]`` as the indices
``[1, 0, 1]`` and ``[0.7, 2.2]`` truncates to ``[0, 2]``, and ``-1`` silently means the last
channel. Each of these pruned the wrong channels without a word, so a keep-set is either
a boolean mask over the group's channels or a list of distinct channel indices in
``[0, size)``; anything else is an error that names the group.
"""
import numpy as np


class KeepError(ValueError):
    """A keep-set that does not name channels of its group unambiguously."""


def kept_indices(group, kept) -> np.ndarray:
    """Sorted channel indices (int64) that ``group`` keeps under ``kept``: a boolean mask of
    length ``group.size`` or distinct integer indices in ``[0, group.size)``."""
    where = f"keep[{group.id}] (group {group.id}, {group.size} channels)"
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
