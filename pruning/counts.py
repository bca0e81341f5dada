"""Means over a pruned axis must divide by the number of channels that are left.

``jnp.mean`` (and LayerNorm, RMSNorm, GroupNorm, global average pooling built on it) is a
``reduce_sum`` followed by a ``div`` by a literal count baked into the jaxpr. When the
reduced axis loses channels, the physically pruned model must divide by the kept count,
and the masked model by the sum of the masks over the reduced positions (at 0/1 masks the
same number), or normalizations would normalize over channels that no longer exist.

``ReductionCounts`` remembers, per value, "this is a sum over ``n`` positions of which
``n_new`` remain", follows it through casts, reshapes and broadcasts, and rewrites the
division (or multiplication by ``1/n``) that consumes it.
"""
from typing import Any, Dict, Optional, Tuple

import jax.numpy as jnp
import numpy as np

from core import primitives as P
from core.trace import is_literal

# Primitives that carry "a sum over n positions" from operand 0 to their result unchanged.
PASS_THROUGH = P.LAYOUT | P.CASTS | P.COPY


def _divisor(literal: float, n_old: float, n_new):
    """``div(sum, n_old)`` -> ``div(sum, n_new)``."""
    return n_new if _close(literal, n_old) else None


def _reciprocal(literal: float, n_old: float, n_new):
    """``mul(sum, 1/n_old)`` -> ``mul(sum, 1/n_new)``."""
    return 1.0 / n_new if n_old and _close(literal, 1.0 / n_old) else None


# Primitives that may apply a count to a marked sum: (operands that may hold the sum, the
# new literal for the other operand, or None when the literal is not that count).
COUNT_CONSUMERS = P.rule_table({P.div_p: ((0,), _divisor), P.mul_p: ((0, 1), _reciprocal)})


class ReductionCounts:
    """Per-evaluation record of sums over shrunk axes (keyed by the value object)."""

    def __init__(self):
        self._marks: Dict[int, Tuple[Any, float, Any]] = {}

    def mark(self, value, n_old: float, n_new) -> None:
        self._marks[id(value)] = (value, float(n_old), n_new)

    def get(self, value) -> Optional[Tuple[float, Any]]:
        entry = self._marks.get(id(value))
        if entry is None or entry[0] is not value:
            return None
        return entry[1], entry[2]

    def follow(self, eqn, invals, outvals) -> None:
        """Carries a mark through a shape-only primitive."""
        if eqn.primitive in PASS_THROUGH and invals and outvals:
            found = self.get(invals[0])
            if found is not None:
                self.mark(outvals[0], *found)

    def rewrite_division(self, eqn, invals):
        """``div(sum, n)`` / ``mul(sum, 1/n)`` with a marked ``sum``: the same op with the new
        count. Returns the new operands, or ``None`` when the equation is not such a division."""
        rule = COUNT_CONSUMERS.get(eqn.primitive)
        if rule is None or len(invals) != 2:
            return None
        candidates, replace = rule
        for k in candidates:
            found = self.get(invals[k])
            other = eqn.invars[1 - k]
            if found is None or not is_literal(other) or np.shape(other.val) != ():
                continue
            new = replace(float(other.val), *found)
            if new is None:
                continue
            dtype = np.asarray(other.val).dtype
            new = jnp.asarray(new, dtype) if hasattr(new, "dtype") else np.asarray(new, dtype)
            out = list(invals)
            out[1 - k] = new
            return out
        return None


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b), 1.0)
