"""How each linear primitive sees its kernel as matrices, and how it runs two thin kernels.

Low-rank methods work on plain matrices: ``W`` of shape (m, n) mapping an input row of m
features to n outputs, with ``X`` the matrix of input rows. A ``dot_general`` with a
parameter operand and a ``conv_general_dilated`` both ARE such a product once their
operands are laid out canonically, so one rule per primitive translates between the
equation and the matrix view:

- ``geometry``: can this equation be factorized, and with which (groups, m, n, rows)?
- ``kernel_matrices``: the kernel as ``(groups, m, n)``;
- ``input_matrix``: the activation as ``(groups, rows, m)`` (a conv's input patches);
- ``factor_arrays``: matrices ``A (groups, m, r)``, ``B (groups, r, n)`` -> the two
  kernels ``w0``, ``w1`` in the layout the primitive wants;
- ``apply``: the equation rebound as two equations with ``w0`` then ``w1``.

A dense kernel (contracted dims C, free dims F) becomes ``w0`` (C..., r) and ``w1``
(r, F...). A k x k conv becomes a k x k conv with r outputs (same strides, padding,
dilation, groups) then a 1 x 1 conv; a grouped conv keeps its groups in both (r/groups
per group); a depthwise conv has nothing to gain and is refused.
"""
import dataclasses
from typing import Optional, Tuple

import jax.numpy as jnp
import numpy as np
from jax import lax

from core import primitives as P
from core.rewrite import bind_equation


@dataclasses.dataclass(frozen=True)
class Geometry:
    """A factorizable equation in matrix terms: ``groups`` independent (m x n) kernels
    applied to ``rows`` input rows each (rows = batch x positions, at the traced shape)."""
    groups: int
    m: int
    n: int
    rows: int

    @property
    def full_rank(self) -> int:
        return min(self.m, self.n)

    def macs(self, rank_per_group: Optional[int] = None) -> int:
        """Multiply-accumulates of the layer, or of its two factors at that rank."""
        if rank_per_group is None:
            return self.rows * self.groups * self.m * self.n
        return self.rows * self.groups * rank_per_group * (self.m + self.n)

    def saves(self, rank_per_group: int) -> bool:
        return rank_per_group * (self.m + self.n) < self.m * self.n


def _prod(values) -> int:
    return int(np.prod(values, dtype=np.int64))


class DotRule:
    """``dot_general`` with a parameter operand (Dense, DenseGeneral, attention projections)."""

    @staticmethod
    def _dims(eqn, k: int):
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        kc, kb = (rc, rb) if k == 1 else (lc, lb)
        xc, xb = (lc, lb) if k == 1 else (rc, rb)
        return tuple(kc), tuple(kb), tuple(xc), tuple(xb)

    def geometry(self, eqn, k: int) -> Tuple[Optional[Geometry], str]:
        kc, kb, xc, xb = self._dims(eqn, k)
        kshape, xshape = eqn.invars[k].aval.shape, eqn.invars[1 - k].aval.shape
        if kb or xb:
            return None, "dot_general with batch dimensions"
        free = [d for d in range(len(kshape)) if d not in kc]
        if not kc or not free:
            return None, "kernel without contracted or free dimensions"
        m, n = _prod([kshape[d] for d in kc]), _prod([kshape[d] for d in free])
        rows = _prod([xshape[d] for d in range(len(xshape)) if d not in xc])
        return Geometry(1, m, n, rows), ""

    def kernel_matrices(self, eqn, k: int, kernel):
        kc, _, _, _ = self._dims(eqn, k)
        free = [d for d in range(kernel.ndim) if d not in kc]
        w = jnp.transpose(kernel, kc + tuple(free))
        return w.reshape(1, _prod([kernel.shape[d] for d in kc]), -1)

    def input_matrix(self, eqn, k: int, x):
        _, _, xc, _ = self._dims(eqn, k)
        free = [d for d in range(x.ndim) if d not in xc]
        x = jnp.transpose(x, tuple(free) + xc)
        return x.reshape(1, -1, _prod([x.shape[len(free) + i] for i in range(len(xc))]))

    def factor_arrays(self, eqn, k: int, a, b):
        kc, _, _, _ = self._dims(eqn, k)
        kshape = eqn.invars[k].aval.shape
        free = [d for d in range(len(kshape)) if d not in kc]
        r = a.shape[-1]
        w0 = a[0].reshape(tuple(kshape[d] for d in kc) + (r,))
        w1 = b[0].reshape((r,) + tuple(kshape[d] for d in free))
        return w0, w1

    def apply(self, eqn, k: int, invals, w0, w1):
        kc, _, xc, _ = self._dims(eqn, k)
        x = invals[1 - k]
        params = dict(eqn.params)
        inner = tuple(range(len(kc)))
        none = ((), ())
        if k == 1:   # y = x . K : x free dims, then the kernel's free dims
            params["dimension_numbers"] = ((xc, inner), none)
            h = bind_equation(eqn.replace(params=params), [x, w0])[0]
            params["dimension_numbers"] = (((h.ndim - 1,), (0,)), none)
            return bind_equation(eqn.replace(params=params), [h, w1])
        # y = K . x : the kernel's free dims, then x free dims
        params["dimension_numbers"] = ((inner, xc), none)
        h = bind_equation(eqn.replace(params=params), [w0, x])[0]
        params["dimension_numbers"] = (((0,), (0,)), none)
        return bind_equation(eqn.replace(params=params), [w1, h])


class ConvRule:
    """``conv_general_dilated`` with a parameter kernel (k x k, 1 x 1, strided, grouped)."""

    @staticmethod
    def _canonical(eqn):
        """Axis order that puts the kernel as (in, spatial..., out)."""
        rhs_spec = eqn.params["dimension_numbers"].rhs_spec
        return (rhs_spec[1],) + tuple(rhs_spec[2:]) + (rhs_spec[0],)

    def geometry(self, eqn, k: int) -> Tuple[Optional[Geometry], str]:
        p = eqn.params
        if k != 1:
            return None, "conv whose kernel operand is not a parameter"
        if p.get("batch_group_count", 1) != 1:
            return None, "conv with batch_group_count"
        dn = p["dimension_numbers"]
        kshape, out = eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape
        groups = p["feature_group_count"]
        cin_per_group, cout = kshape[dn.rhs_spec[1]], kshape[dn.rhs_spec[0]]
        if groups > 1 and cin_per_group == 1:
            return None, "depthwise conv (one input channel per group)"
        taps = _prod([kshape[d] for d in dn.rhs_spec[2:]])
        rows = _prod([out[d] for d in range(len(out)) if d != dn.out_spec[1]])
        return Geometry(groups, taps * cin_per_group, cout // groups, rows), ""

    def kernel_matrices(self, eqn, k: int, kernel):
        groups = eqn.params["feature_group_count"]
        w = jnp.transpose(kernel, self._canonical(eqn))          # (in, spatial..., out)
        m = _prod(w.shape[:-1])
        return jnp.transpose(w.reshape(m, groups, -1), (1, 0, 2))

    def input_matrix(self, eqn, k: int, x):
        """Input patches per group, features ordered (channel, spatial) like the kernel."""
        p = eqn.params
        dn = p["dimension_numbers"]
        kshape = eqn.invars[1].aval.shape
        patches = lax.conv_general_dilated_patches(
            x, tuple(kshape[d] for d in dn.rhs_spec[2:]), p["window_strides"], p["padding"],
            p["lhs_dilation"], p["rhs_dilation"], dn, precision=lax.Precision.HIGHEST)
        feature = dn.out_spec[1]
        others = [d for d in range(patches.ndim) if d != feature]
        patches = jnp.transpose(patches, others + [feature])
        groups = p["feature_group_count"]
        patches = patches.reshape(-1, groups, patches.shape[-1] // groups)
        return jnp.transpose(patches, (1, 0, 2))

    def factor_arrays(self, eqn, k: int, a, b):
        canonical = self._canonical(eqn)
        inverse = tuple(int(i) for i in np.argsort(canonical))
        kshape = eqn.invars[1].aval.shape
        groups, m, r = a.shape
        n = b.shape[-1]
        lead = tuple(kshape[d] for d in canonical[:-1])            # (in, spatial...)
        w0 = jnp.transpose(a, (1, 0, 2)).reshape(lead + (groups * r,))
        ones = (1,) * (len(lead) - 1)
        w1 = jnp.transpose(b, (1, 0, 2)).reshape((r,) + ones + (groups * n,))
        return jnp.transpose(w0, inverse), jnp.transpose(w1, inverse)

    def apply(self, eqn, k: int, invals, w0, w1):
        p = dict(eqn.params)
        h = bind_equation(eqn, [invals[0], w0])[0]
        nsp = len(p["window_strides"])
        dn = p["dimension_numbers"]
        p.update(window_strides=(1,) * nsp, padding=((0, 0),) * nsp, lhs_dilation=(1,) * nsp,
                 rhs_dilation=(1,) * nsp,
                 dimension_numbers=lax.ConvDimensionNumbers(dn.out_spec, dn.rhs_spec,
                                                            dn.out_spec))
        return bind_equation(eqn.replace(params=p), [h, w1])


# Primitive -> rule; a new linear primitive is supported by adding a rule here.
RULES = {P.dot_general_p: DotRule(), P.conv_general_dilated_p: ConvRule()}


def factor_shapes(eqn, k: int, rank_per_group: int):
    """Shapes of (w0, w1) for a rank, without computing them."""
    rule = RULES[eqn.primitive]
    geo, _ = rule.geometry(eqn, k)
    a = np.zeros((geo.groups, geo.m, rank_per_group), np.float32)
    b = np.zeros((geo.groups, rank_per_group, geo.n), np.float32)
    w0, w1 = rule.factor_arrays(eqn, k, a, b)
    return w0.shape, w1.shape
