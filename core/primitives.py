"""Primitive categories keyed by the ``Primitive`` objects themselves, for rule tables.

Every tool in this project dispatches on the primitives of a jaxpr: cost counts FLOPs of
``LINEAR`` ops, fake-quant puts quantizers around them, BatchNorm folding walks the
elementwise chain after them, the latency model and the NAS block graph turn equations into
device ops and graph nodes. Written as lists of names, those decisions drifted: ``(conv,
dot)`` was defined five times, ``"copy_p"`` sat in six lists although the primitive is named
``copy`` (those entries never matched), the latency model listed ``"remat"`` where JAX's
primitive is ``remat2``, and a typo or a renamed primitive fails silently (nothing matches).

Here each category is a frozenset of the primitive objects JAX binds, so ``eqn.primitive in
LINEAR`` is an identity test that cannot go stale: a primitive JAX removes is an import error
in this one file, not a rule that quietly never fires. ``rule_table`` builds a dict keyed by
primitive from primitives and whole categories (refusing a primitive given two rules), so a
tool's dispatch is one table instead of an if/elif chain over names.

Primitives come from ``jax.extend.core.primitives`` (JAX's public list), then ``jax.lax``;
the few JAX exports from neither are found by ``_private``, the one lookup by name, which
fails at import with a message naming the primitive and the JAX version. ``by_name`` maps a
name from data (a quantization profile's op list) to its primitive, or says it is unknown.
"""
import difflib
import importlib
from typing import Any, Dict, FrozenSet, Iterable, Mapping, Union

import jax
from jax.extend.core import Primitive
from jax.extend.core.primitives import (  # noqa: F401  (re-exported for rule tables)
    abs_p, acos_p, acosh_p, add_jaxvals_p, add_p, and_p, argmax_p, argmin_p, asin_p,
    asinh_p, atan2_p, atan_p, atanh_p, bessel_i0e_p, bessel_i1e_p, broadcast_in_dim_p,
    cbrt_p, ceil_p, clamp_p, closed_call_p, clz_p, complex_p, concatenate_p, cond_p, conj_p,
    conv_general_dilated_p, convert_element_type_p, copy_p, cos_p, cosh_p, cumlogsumexp_p,
    cummax_p, cummin_p, cumprod_p, cumsum_p, custom_jvp_call_p, custom_lin_p, custom_vjp_call_p,
    digamma_p, div_p, dot_general_p, dynamic_slice_p, dynamic_update_slice_p, eq_p,
    erf_inv_p, erf_p, erfc_p, exp2_p, exp_p, expm1_p, fft_p, floor_p, gather_p, ge_p, gt_p,
    igamma_grad_a_p, igamma_p, igammac_p, imag_p, integer_pow_p, iota_p, is_finite_p, jit_p,
    le_p, lgamma_p, log1p_p, log_p, logistic_p, lt_p, max_p, min_p, mul_p, ne_p, neg_p,
    nextafter_p, not_p, or_p, pad_p, polygamma_p, population_count_p, pow_p, real_p,
    reduce_and_p, reduce_max_p, reduce_min_p, reduce_or_p, reduce_p, reduce_precision_p,
    reduce_prod_p, reduce_sum_p, reduce_window_max_p, reduce_window_min_p, reduce_window_p,
    reduce_window_sum_p, reduce_xor_p, regularized_incomplete_beta_p, rem_p, remat_p,
    reshape_p, rev_p, round_p, rsqrt_p, scan_p, scatter_add_p, scatter_max_p, scatter_min_p,
    scatter_mul_p, scatter_p, select_and_gather_add_p, select_n_p, sharding_constraint_p,
    shift_left_p, shift_right_arithmetic_p, shift_right_logical_p, sign_p, sin_p, sinh_p,
    slice_p, sort_p, sqrt_p, square_p, squeeze_p, stop_gradient_p, sub_p, tan_p, tanh_p,
    top_k_p, transpose_p, while_p, xor_p, zeta_p)
from jax.lax import optimization_barrier_p, scatter_sub_p, split_p  # noqa: F401

Category = FrozenSet[Primitive]


def _private(name: str, module: str) -> Primitive:
    """The one lookup by name: a primitive JAX binds but exports from neither
    ``jax.extend.core.primitives`` nor ``jax.lax``."""
    found = getattr(importlib.import_module(module), name + "_p", None)
    if not isinstance(found, Primitive) or found.name != name:
        raise ImportError(
            f"core.primitives: JAX {jax.__version__} has no primitive '{name}' at "
            f"{module}.{name}_p (found {found!r}); find where this JAX defines it (or that it "
            "was removed) and update core/primitives.py")
    return found


pvary_p = _private("pvary", "jax._src.core")        # varying-manual-axes annotation
reshard_p = _private("reshard", "jax._src.pjit")    # sharding annotation (explicit mode)

# ------------------------------------------------------------------ elementwise
# Elementwise math on one operand.
MATH_UNARY: Category = frozenset({
    neg_p, sign_p, floor_p, ceil_p, round_p, is_finite_p, exp_p, exp2_p, log_p, log1p_p,
    expm1_p, tanh_p, logistic_p, sin_p, cos_p, tan_p, asin_p, acos_p, atan_p, sinh_p, cosh_p,
    asinh_p, acosh_p, atanh_p, sqrt_p, rsqrt_p, cbrt_p, abs_p, not_p, erf_p, erfc_p,
    erf_inv_p, lgamma_p, digamma_p, bessel_i0e_p, bessel_i1e_p, integer_pow_p, square_p,
    population_count_p, clz_p})
# Change a value's type or precision, not what it means.
CASTS: Category = frozenset({convert_element_type_p, reduce_precision_p})
# ``jnp.copy`` and friends; the primitive ``copy_p`` is named ``copy``.
COPY: Category = frozenset({copy_p})
# Annotations for autodiff and sharding: the value passes through unchanged.
ANNOTATIONS: Category = frozenset({stop_gradient_p, sharding_constraint_p, reshard_p, pvary_p})
COMPLEX_PARTS: Category = frozenset({real_p, imag_p, conj_p})
# Every one-operand primitive whose result has its operand's shape.
ELEMENTWISE_UNARY: Category = MATH_UNARY | CASTS | COPY | ANNOTATIONS | COMPLEX_PARTS
# Operands broadcast against each other (rank-0 operands included): binary arithmetic,
# comparisons, and the ternary select_n and clamp.
ELEMENTWISE_NARY: Category = frozenset({
    add_p, sub_p, mul_p, div_p, rem_p, pow_p, max_p, min_p, atan2_p, nextafter_p, and_p,
    or_p, xor_p, eq_p, ne_p, lt_p, le_p, gt_p, ge_p, shift_left_p, shift_right_logical_p,
    shift_right_arithmetic_p, add_jaxvals_p, select_n_p, clamp_p, complex_p, igamma_p,
    igammac_p, igamma_grad_a_p, polygamma_p, zeta_p, regularized_incomplete_beta_p})
ELEMENTWISE: Category = ELEMENTWISE_UNARY | ELEMENTWISE_NARY
# Elementwise primitives that do no arithmetic (no FLOPs, nothing for a device to run).
NOT_ARITHMETIC: Category = CASTS | COPY | ANNOTATIONS | COMPLEX_PARTS
ARITHMETIC: Category = ELEMENTWISE - NOT_ARITHMETIC

# ------------------------------------------------------------------- reductions
REDUCTIONS: Category = frozenset({
    reduce_sum_p, reduce_max_p, reduce_min_p, reduce_prod_p, reduce_and_p, reduce_or_p,
    reduce_xor_p, argmax_p, argmin_p})
CUMULATIVE: Category = frozenset({cumsum_p, cumprod_p, cummax_p, cummin_p, cumlogsumexp_p})
# Pooling: a reduction over a sliding window (``reduce_window`` is the generic one).
POOLING: Category = frozenset({reduce_window_sum_p, reduce_window_max_p, reduce_window_min_p,
                               reduce_window_p})
WINDOW_REDUCTIONS: Category = POOLING | {select_and_gather_add_p}

# ----------------------------------------------------------------------- layout
# Change the shape but not the order of elements in memory.
RESHAPES: Category = frozenset({reshape_p, broadcast_in_dim_p, squeeze_p})
LAYOUT: Category = RESHAPES | {transpose_p}
# Select, pad, join or split along axes.
SLICING: Category = frozenset({slice_p, dynamic_slice_p, dynamic_update_slice_p, pad_p, rev_p,
                               gather_p, concatenate_p, split_p})
SCATTERS: Category = frozenset({scatter_p, scatter_add_p, scatter_sub_p, scatter_mul_p,
                                scatter_min_p, scatter_max_p})

# ----------------------------------------------------------------------- linear
# The ops that carry weights: convolutions (any groups, dilation, layout) and dots
# (Dense, DenseGeneral, attention einsums).
LINEAR: Category = frozenset({conv_general_dilated_p, dot_general_p})

# ------------------------------------------------------------ calls and control
# Primitives that call a sub-jaxpr with their operands (operand i -> invar i) and return its
# outputs, mapped to the parameter holding that jaxpr (``jax.checkpoint`` binds ``remat2``,
# the object ``remat_p``; ``jax.nn.relu`` is a ``custom_jvp_call`` around a ``jit``).
CALL_JAXPR_PARAM: Mapping[Primitive, str] = {
    jit_p: "jaxpr",
    closed_call_p: "call_jaxpr",
    custom_jvp_call_p: "call_jaxpr",
    custom_vjp_call_p: "call_jaxpr",
    remat_p: "jaxpr",
}
CALLS: Category = frozenset(CALL_JAXPR_PARAM)
# Calls with user derivative rules, which a re-evaluation must bind again to keep.
CUSTOM_DERIVATIVE_CALLS: Category = frozenset({custom_jvp_call_p, custom_vjp_call_p})
CONTROL_FLOW: Category = frozenset({cond_p, scan_p, while_p})

CATEGORIES: Dict[str, Category] = {
    name: value for name, value in dict(globals()).items()
    if name.isupper() and isinstance(value, frozenset)}

ALL: Category = frozenset().union(*CATEGORIES.values()) | {
    value for value in dict(globals()).values() if isinstance(value, Primitive)}
_BY_NAME: Dict[str, Primitive] = {p.name: p for p in ALL}


def by_name(name: str) -> Primitive:
    """The primitive JAX names ``name`` (for names that come from data, such as the op lists
    of a quantization profile); a ``KeyError`` names close matches otherwise."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    close = difflib.get_close_matches(name, sorted(_BY_NAME), n=3)
    raise KeyError(f"no primitive named {name!r} in core.primitives"
                   + (f" (did you mean {', '.join(close)}?)" if close else "")
                   + "; a jaxpr shows the names JAX uses (e.g. 'copy', 'remat2')")


Key = Union[Primitive, Iterable[Primitive]]


def rule_table(entries: Mapping[Key, Any]) -> Dict[Primitive, Any]:
    """``{primitive or category: rule}`` -> ``{primitive: rule}``. A primitive reached by
    two entries is an error naming it, so the order of entries never decides a rule."""
    table: Dict[Primitive, Any] = {}
    for key, rule in entries.items():
        for prim in ([key] if isinstance(key, (Primitive, str)) else key):
            if not isinstance(prim, Primitive):
                raise TypeError(f"rule_table keys are primitives or categories, not {prim!r}")
            if prim in table:
                raise ValueError(f"primitive '{prim.name}' has two rules in one table: "
                                 f"{table[prim]!r} and {rule!r}")
            table[prim] = rule
    return table


def names(category: Iterable[Primitive]) -> list:
    """Sorted primitive names, for messages."""
    return sorted(p.name for p in category)
