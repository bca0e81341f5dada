"""Channel types of array axes, solved by unification: the algebra under channel groups.

Every axis of every array in a jaxpr gets a *layout* that says which channels it holds:

- a leaf ``int``: a node of a union-find. Two axes whose channels must be removed
  together (a conv output and the BatchNorm scale applied to it, two operands of a residual
  add) are unified into the same node. A node may be *fixed* (not prunable) with a reason:
  it reaches a model input or output, it is a spatial axis, an unsupported primitive
  touched it. A fixed node plays the role of DESIGN.md's ``Fixed(n)``.
- ``Concat(parts)``: the axis is the parts laid end to end (concatenate, split, a slice
  of a fused qkv projection).
- ``Product(factors)``: the axis is the row-major flattening of the factors
  (reshape between ``H*D`` and ``(H, D)``: heads and head_dim; grouped convs).

Unifying a leaf with a Concat or Product *refines* the leaf: the node keeps pointing to
the structure (``refined``), so every axis that holds that node sees the refinement, the way
type variables are substituted in type inference. Two structures are aligned by splitting
(a Concat boundary inside a leaf splits the leaf; inside a Product it splits the outer
factor, distributing the product) and factoring (``Product(6, 4)`` vs ``Product(2, 12)``
refine to ``(2, 3, 4)``). When no alignment exists the axes are fixed ("incompatible
layouts"): the answer is conservative, never wrong.

A channel group is an unrefined root node reached from a parameter axis. ``positions``
turns a layout into index maps: for each leaf, an int array ``(leaf size, multiplicity)``
of the positions along the axis that channel ``c`` of the leaf occupies (multiplicity > 1
inside a Product: removing one head removes ``head_dim`` positions).

Every operation is near-constant time per axis, so analysing a jaxpr is linear in its size.
"""
from typing import Dict, List, Optional, Tuple, Union

import numpy as np


class Concat:
    """The axis is ``parts`` laid end to end."""
    __slots__ = ("parts", "size")

    def __init__(self, parts, size):
        self.parts = tuple(parts)
        self.size = size

    def __repr__(self):
        return f"Concat({', '.join(map(repr, self.parts))})"


class Product:
    """The axis is the row-major flattening of ``factors`` (first factor outermost)."""
    __slots__ = ("factors", "size")

    def __init__(self, factors, size):
        self.factors = tuple(factors)
        self.size = size

    def __repr__(self):
        return f"Product({', '.join(map(repr, self.factors))})"


Layout = Union[int, Concat, Product]


class Reason(tuple):
    """Why a node is fixed: ``(kind, message, eqn, callers)``. ``eqn`` (may be None) gives
    the source line lazily, so fixing thousands of spatial axes costs nothing; ``callers``
    are the equations that called the sub-jaxpr holding ``eqn``, whose source lines stand
    in when ``eqn``'s own is unknown (library internals such as ``jnp.take``)."""
    __slots__ = ()

    def __new__(cls, kind: str, message: str, eqn=None, callers=()):
        return tuple.__new__(cls, (kind, message, eqn, callers))

    @property
    def kind(self) -> str:
        return self[0]

    def describe(self) -> str:
        kind, message, eqn, callers = self
        if eqn is None:
            return message
        from core.trace import source_line
        src = source_line(eqn)
        for caller in reversed(callers):
            if src != "unknown source":
                break
            src = source_line(caller)
        return f"{message} ({eqn.primitive.name} at {src})"


class _Conflict(Exception):
    pass


class ChannelTypes:
    """Union-find over channel nodes, with refinement into Concat / Product layouts."""

    def __init__(self):
        self.parent: List[int] = []
        self.node_size: List[int] = []
        self.refined: List[Optional[Layout]] = []
        self.reason: List[Optional[Reason]] = []

    # ---------------------------------------------------------------- nodes
    def new(self, size: int, reason: Optional[Reason] = None) -> int:
        i = len(self.parent)
        self.parent.append(i)
        self.node_size.append(int(size))
        self.refined.append(None)
        self.reason.append(reason)
        return i

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def size_of(self, layout: Layout) -> int:
        return self.node_size[layout] if isinstance(layout, int) else layout.size

    # ------------------------------------------------------- construction
    def concat(self, parts) -> Layout:
        parts = [p for p in parts if self.size_of(p) > 0]
        if len(parts) == 1:
            return parts[0]
        return Concat(parts, sum(self.size_of(p) for p in parts))

    def product(self, factors) -> Layout:
        factors = list(factors)
        kept = [f for f in factors if self.size_of(f) != 1]
        if not kept:
            return factors[0]
        if len(kept) == 1:
            return kept[0]
        size = 1
        for f in kept:
            size *= self.size_of(f)
        return Product(kept, size)

    # ----------------------------------------------------------- resolving
    def resolve(self, layout: Layout) -> Layout:
        """Follows unions and refinements; leaves are unrefined roots, nested Concats and
        Products are flattened and size-1 factors dropped."""
        if isinstance(layout, int):
            root = self.find(layout)
            ref = self.refined[root]
            if ref is None:
                return root
            res = self.resolve(ref)
            self.refined[root] = res
            return res
        if isinstance(layout, Concat):
            parts = []
            for p in layout.parts:
                r = self.resolve(p)
                parts.extend(r.parts if isinstance(r, Concat) else (r,))
            return self.concat(parts)
        factors = []
        for f in layout.factors:
            r = self.resolve(f)
            factors.extend(r.factors if isinstance(r, Product) else (r,))
        return self.product(factors)

    def leaves(self, layout: Layout) -> List[int]:
        """Root nodes of a layout, in order (a node may repeat)."""
        out = []
        stack = [self.resolve(layout)]
        while stack:
            item = stack.pop()
            if isinstance(item, int):
                out.append(item)
            else:
                stack.extend(reversed(item.parts if isinstance(item, Concat) else item.factors))
        return out

    # -------------------------------------------------------------- fixing
    def fix(self, layout: Layout, reason: Reason) -> None:
        """Marks every channel of a layout non-prunable (the first reason is kept)."""
        if isinstance(layout, int):
            root = self.find(layout)
            if self.refined[root] is None:
                if self.reason[root] is None:
                    self.reason[root] = reason
                return
        for leaf in self.leaves(layout):
            if self.reason[leaf] is None:
                self.reason[leaf] = reason

    def reason_of(self, layout: Layout) -> Optional[Reason]:
        for leaf in self.leaves(layout):
            if self.reason[leaf] is not None:
                return self.reason[leaf]
        return None

    # ----------------------------------------------------------- unifying
    def unify(self, a: Layout, b: Layout, eqn=None, callers=()) -> bool:
        """Makes two axes hold the same channels; on conflict fixes both and returns False."""
        if a is b:
            return True
        try:
            self._unify(a, b)
            return True
        except _Conflict:
            reason = Reason("conflict", "incompatible channel layouts", eqn, callers)
            self.fix(a, reason)
            self.fix(b, reason)
            return False

    def _unify(self, a: Layout, b: Layout) -> None:
        a = self.resolve(a)
        b = self.resolve(b)
        a_leaf, b_leaf = isinstance(a, int), isinstance(b, int)
        if a_leaf and b_leaf and a == b:
            return
        if self.size_of(a) != self.size_of(b):
            raise _Conflict()
        if a_leaf and b_leaf:
            self._union(a, b)
        elif a_leaf:
            self._refine(a, b)
        elif b_leaf:
            self._refine(b, a)
        elif isinstance(a, Concat):
            self._unify_concat(a, b)
        elif isinstance(b, Concat):
            self._unify_concat(b, a)
        else:
            self._unify_products(a, b)

    def _union(self, a: int, b: int) -> None:
        # Attach the younger node under the older one: keeps roots stable and paths short.
        if a > b:
            a, b = b, a
        self.parent[b] = a
        if self.reason[a] is None:
            self.reason[a] = self.reason[b]

    def _refine(self, root: int, layout: Layout) -> None:
        if root in self.leaves(layout):
            raise _Conflict()
        self.refined[root] = layout
        if self.reason[root] is not None:
            self.fix(layout, self.reason[root])

    def _unify_concat(self, concat: Concat, other: Layout) -> None:
        rest = other
        for part in concat.parts[:-1]:
            left, rest = self._split(rest, self.size_of(part))
            self._unify(part, left)
        self._unify(concat.parts[-1], rest)

    def _split(self, layout: Layout, k: int) -> Tuple[Layout, Layout]:
        """``layout == Concat(left, right)`` with ``size(left) == k``, refining as needed."""
        layout = self.resolve(layout)
        if isinstance(layout, int):
            n = self.node_size[layout]
            left, right = self.new(k), self.new(n - k)
            self._refine(layout, Concat((left, right), n))
            return left, right
        if isinstance(layout, Concat):
            offset = 0
            for i, part in enumerate(layout.parts):
                n = self.size_of(part)
                if offset + n == k:
                    return self.concat(layout.parts[:i + 1]), self.concat(layout.parts[i + 1:])
                if offset + n > k:
                    pl, pr = self._split(part, k - offset)
                    return (self.concat(layout.parts[:i] + (pl,)),
                            self.concat((pr,) + layout.parts[i + 1:]))
                offset += n
            raise _Conflict()
        outer, rest = layout.factors[0], layout.factors[1:]
        inner = layout.size // self.size_of(outer)
        if k % inner:
            raise _Conflict()
        ol, orr = self._split(outer, k // inner)
        return self.product((ol,) + rest), self.product((orr,) + rest)

    def _factor(self, layout: Layout, outer_size: int) -> Tuple[Layout, Layout]:
        """``layout == Product(outer, inner)`` with ``size(outer) == outer_size``."""
        layout = self.resolve(layout)
        if not isinstance(layout, int):
            raise _Conflict()
        n = self.node_size[layout]
        outer, inner = self.new(outer_size), self.new(n // outer_size)
        self._refine(layout, Product((outer, inner), n))
        return outer, inner

    def _unify_products(self, a: Product, b: Product) -> None:
        fa, fb = list(a.factors), list(b.factors)
        i = j = 0
        while i < len(fa) and j < len(fb):
            x, y = fa[i], fb[j]
            sx, sy = self.size_of(self.resolve(x)), self.size_of(self.resolve(y))
            if sx == sy:
                self._unify(x, y)
                i += 1
                j += 1
            elif sx > sy:
                if sx % sy:
                    raise _Conflict()
                outer, fa[i] = self._factor(x, sy)
                self._unify(outer, y)
                j += 1
            else:
                if sy % sx:
                    raise _Conflict()
                outer, fb[j] = self._factor(y, sx)
                self._unify(x, outer)
                i += 1
        if i < len(fa) or j < len(fb):
            raise _Conflict()

    # ----------------------------------------------------------- index maps
    def positions(self, layout: Layout) -> Dict[int, np.ndarray]:
        """``{root: int array (root size, multiplicity)}``: the positions along the axis
        that each channel of each leaf occupies (each row sorted)."""
        found = self._positions(self.resolve(layout))
        return {leaf: (np.sort(pos, axis=1) if pos.shape[1] > 1 else pos)
                for leaf, pos in found.items()}

    def _positions(self, layout: Layout) -> Dict[int, np.ndarray]:
        if isinstance(layout, int):
            return {layout: _arange_column(self.node_size[layout])}
        out: Dict[int, np.ndarray] = {}
        if isinstance(layout, Concat):
            offset = 0
            for part in layout.parts:
                for leaf, pos in self._positions(part).items():
                    _merge(out, leaf, pos + offset)
                offset += self.size_of(part)
            return out
        sizes = [self.size_of(f) for f in layout.factors]
        strides = [int(np.prod(sizes[i + 1:], dtype=np.int64)) for i in range(len(sizes))]
        for i, factor in enumerate(layout.factors):
            others = np.zeros(1, np.int64)
            for j, (n, s) in enumerate(zip(sizes, strides)):
                if j != i:
                    others = (others[:, None] + np.arange(n, dtype=np.int64)[None, :] * s
                              ).reshape(-1)
            others.sort()
            for leaf, pos in self._positions(factor).items():
                full = pos[:, :, None] * strides[i] + others[None, None, :]
                _merge(out, leaf, full.reshape(pos.shape[0], -1))
        return out


_ARANGE_CACHE: Dict[int, np.ndarray] = {}


def _arange_column(n: int) -> np.ndarray:
    arr = _ARANGE_CACHE.get(n)
    if arr is None:
        arr = np.arange(n, dtype=np.int64)[:, None]
        arr.setflags(write=False)
        _ARANGE_CACHE[n] = arr
    return arr


def _merge(out: Dict[int, np.ndarray], leaf: int, pos: np.ndarray) -> None:
    if leaf in out:
        out[leaf] = np.concatenate([out[leaf], pos], axis=1)
    else:
        out[leaf] = pos
