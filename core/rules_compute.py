"""Channel rules for primitives that compute: elementwise, reductions, windows, conv, dot,
and the primitives that call sub-jaxprs (jit, custom_jvp/vjp, remat, cond, while, scan).

Each rule states which axes a primitive ties together; see ``core.interpreter`` for the
contract and ``core.channel_types`` for the layouts. The geometry of the two linear
primitives is all there is to layer types here: a Dense, a DenseGeneral, an attention
einsum, a depthwise or grouped conv are the same two rules with different parameters.
"""
from typing import List

from core import primitives as P
from core.interpreter import AxisTypes, register, register_category
from core.trace import call_jaxpr, shape_of

# ------------------------------------------------------------------ elementwise
def unary(interp, eqn, ins: List[AxisTypes]) -> List[AxisTypes]:
    """Same axes in and out (activations, casts, rsqrt, integer_pow...)."""
    if shape_of(eqn.outvars[0]) != shape_of(eqn.invars[0]):
        return interp.default_rule(eqn, ins)
    return [ins[0]] * len(eqn.outvars)


def elementwise(interp, eqn, ins: List[AxisTypes]) -> List[AxisTypes]:
    """Operands of the result's shape share every axis; rank-0 operands (weak scalars,
    ``select_n``'s scalar predicate, ``clamp``'s bounds) tie nothing, and a size-1 axis
    broadcast against a longer one (``x - mean`` with mean ``(1, 1, 1, C)``) is fixed."""
    out_shape = shape_of(eqn.outvars[0])
    result = None
    for atom, axes in zip(eqn.invars, ins):
        shape = shape_of(atom)
        if shape == out_shape:
            if result is None:
                result = axes
            else:
                interp.unify_all(result, axes, eqn)
    rank = len(out_shape)
    merged = list(result) if result is not None else [None] * rank
    for atom, axes in zip(eqn.invars, ins):
        shape = shape_of(atom)
        if shape == out_shape or not shape:
            continue
        if len(shape) != rank:
            return interp.default_rule(eqn, ins)
        for d, (n, layout) in enumerate(zip(shape, axes)):
            if n == out_shape[d]:
                if merged[d] is None:
                    merged[d] = layout
                else:
                    interp.unify(merged[d], layout, eqn)
            else:
                interp.fix(layout, "unit", "size-1 axis broadcast", eqn)
    new = interp.new
    result = tuple(t if t is not None else new(n) for t, n in zip(merged, out_shape))
    return [result] * len(eqn.outvars)


register_category(P.ELEMENTWISE_UNARY, unary)
register_category(P.ELEMENTWISE_NARY, elementwise)


@register(P.optimization_barrier_p)
def identity_per_operand(interp, eqn, ins):
    return list(ins)


@register(P.iota_p)
def iota(interp, eqn, ins):
    """Fresh axes. A prunable group holding an iota axis (rotary frequencies) must be
    rewritten as ``iota`` then a take of the kept positions, not as a shorter iota."""
    return [interp.fresh(shape_of(eqn.outvars[0]))]


# ------------------------------------------------------------------- reductions
def reduction(interp, eqn, ins):
    """Reduced axes disappear; a pruned channel axis may be reduced over (mean pooling
    over space, LayerNorm statistics over channels: the pruned model reduces over the
    kept channels; its ``div`` by a literal count must then be rewritten)."""
    axes = set(eqn.params["axes"])
    return [tuple(t for d, t in enumerate(ins[0]) if d not in axes)]


register_category(P.REDUCTIONS, reduction)


@register(P.reduce_p)
def variadic_reduce(interp, eqn, ins):
    dims = set(eqn.params["dimensions"])
    n = len(ins) // 2  # operands then init values
    for axes in ins[1:n]:
        interp.unify_all(ins[0], axes, eqn)
    kept = tuple(t for d, t in enumerate(ins[0]) if d not in dims)
    return [kept] * len(eqn.outvars)


def cumulative(interp, eqn, ins):
    """Channel ``i`` of the result mixes channels ``0..i``: the scanned axis is fixed."""
    axis = eqn.params["axis"]
    interp.fix(ins[0][axis], "order", "prefix reduction along the axis", eqn)
    return [ins[0]]


register_category(P.CUMULATIVE, cumulative)


@register(P.sort_p)
def sort(interp, eqn, ins):
    dim = eqn.params["dimension"]
    for axes in ins[1:]:
        interp.unify_all(ins[0], axes, eqn)
    interp.fix(ins[0][dim], "order", "sorted along the axis", eqn)
    return [ins[0]] * len(eqn.outvars)


@register(P.top_k_p)
def top_k(interp, eqn, ins):
    interp.fix(ins[0][-1], "order", "top_k along the axis", eqn)
    axes = ins[0][:-1] + (interp.new(shape_of(eqn.outvars[0])[-1], interp.types.reason_of(
        ins[0][-1])),)
    return [axes, axes]


# ------------------------------------------------------------------------ windows
def reduce_window(interp, eqn, ins):
    """Pooling: an axis with a trivial window passes through; a windowed axis (space)
    mixes neighbours, so it is fixed and the result gets a fresh fixed axis."""
    p = eqn.params
    rank = len(p["window_dimensions"])
    base = p.get("base_dilation") or (1,) * rank
    wdil = p.get("window_dilation") or (1,) * rank
    out_shape = shape_of(eqn.outvars[0])
    n_operands = len(eqn.outvars)
    for axes in ins[1:n_operands]:
        interp.unify_all(ins[0], axes, eqn)
    out = []
    for d in range(rank):
        trivial = (p["window_dimensions"][d] == 1 and p["window_strides"][d] == 1
                   and tuple(p["padding"][d]) == (0, 0) and base[d] == 1 and wdil[d] == 1)
        if trivial:
            out.append(ins[0][d])
        else:
            reason = interp.reason("spatial", "pooling window", eqn)
            interp.types.fix(ins[0][d], reason)
            out.append(interp.new(out_shape[d], reason))
    return [tuple(out)] * n_operands


register_category(P.WINDOW_REDUCTIONS, reduce_window)


# --------------------------------------------------------------------- linear ops
@register(P.conv_general_dilated_p)
def conv(interp, eqn, ins):
    """Conv: input features tie to the kernel's input axis, the kernel's output axis is
    the result's feature axis, space is fixed. ``feature_group_count`` G splits the input
    features as ``Product(G, I)`` and the output features as ``Product(G, O/G)``: depthwise
    (I = 1) ties input and output channels one to one; a grouped conv yields a group for
    whole conv groups and groups for the positions inside each."""
    p = eqn.params
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    lhs, rhs = ins
    out_shape = shape_of(eqn.outvars[0])
    out = [None] * len(out_shape)
    spatial = interp.reason("spatial", "spatial axis of a convolution", eqn)
    window = interp.reason("window", "kernel window of a convolution", eqn)
    for k in range(len(lhs_spec) - 2):
        interp.types.fix(lhs[lhs_spec[2 + k]], spatial)
        interp.types.fix(rhs[rhs_spec[2 + k]], window)
        out[out_spec[2 + k]] = interp.new(out_shape[out_spec[2 + k]], spatial)
    c_in, k_in, k_out = lhs[lhs_spec[1]], rhs[rhs_spec[1]], rhs[rhs_spec[0]]
    groups = p["feature_group_count"]
    if p["batch_group_count"] != 1:
        for layout in (lhs[lhs_spec[0]], c_in, k_in, k_out):
            interp.fix(layout, "unsupported", "conv with batch_group_count", eqn)
        out[out_spec[0]] = interp.new(out_shape[out_spec[0]],
                                      interp.types.reason_of(lhs[lhs_spec[0]]))
        out[out_spec[1]] = k_out
        return [tuple(out)]
    out[out_spec[0]] = lhs[lhs_spec[0]]
    if groups == 1:
        interp.unify(c_in, k_in, eqn)
    else:
        types = interp.types
        g = interp.new(groups)
        per_group_out = interp.new(types.size_of(types.resolve(k_out)) // groups)
        interp.unify(c_in, types.product((g, k_in)), eqn)
        interp.unify(k_out, types.product((g, per_group_out)), eqn)
    k_in_size = shape_of(eqn.invars[1])[rhs_spec[1]]
    if k_in_size == 1 and groups > 1:
        # Depthwise: one input per group, not a channel. (With one group, a kernel input
        # axis of size one is a real channel, e.g. one piece of a split.)
        interp.fix(k_in, "unit", "unit input axis of a depthwise kernel", eqn)
    out[out_spec[1]] = k_out
    return [tuple(out)]


@register(P.dot_general_p)
def dot_general(interp, eqn, ins):
    """Contracting axes tie pairwise, batch axes tie pairwise; the result is batch axes,
    then the free axes of each side (covers Dense, DenseGeneral with several kernel axes,
    and the two einsums of attention)."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = ins
    for a, b in zip(lc, rc):
        interp.unify(lhs[a], rhs[b], eqn)
    for a, b in zip(lb, rb):
        interp.unify(lhs[a], rhs[b], eqn)
    used_l, used_r = set(lc) | set(lb), set(rc) | set(rb)
    out = [lhs[a] for a in lb]
    out += [t for a, t in enumerate(lhs) if a not in used_l]
    out += [t for b, t in enumerate(rhs) if b not in used_r]
    return [tuple(out)]


# ---------------------------------------------------------------------- calls
def call(interp, eqn, ins):
    """jit, custom_jvp_call, custom_vjp_call, remat: the sub-jaxpr sees the operands."""
    sub = call_jaxpr(eqn)
    if sub is None:
        return interp.default_rule(eqn, ins)
    return interp.call(sub, ins)


register_category(P.CALLS, call)


@register(P.cond_p)
def cond(interp, eqn, ins):
    """Every branch sees the operands; their results must agree axis by axis."""
    outs = None
    for branch in eqn.params["branches"]:
        branch_outs = interp.call(branch, ins[1:])
        if outs is None:
            outs = branch_outs
        else:
            for a, b in zip(outs, branch_outs):
                interp.unify_all(a, b, eqn)
    return outs


@register(P.while_p)
def while_loop(interp, eqn, ins):
    """The carry keeps its layout across iterations: body output unifies with input."""
    p = eqn.params
    nc, nb = p["cond_nconsts"], p["body_nconsts"]
    carry = ins[nc + nb:]
    body_out = interp.call(p["body_jaxpr"], list(ins[nc:nc + nb]) + list(carry))
    for a, b in zip(carry, body_out):
        interp.unify_all(a, b, eqn)
    interp.call(p["cond_jaxpr"], list(ins[:nc]) + list(carry))
    return list(carry)


@register(P.scan_p)
def scan(interp, eqn, ins):
    """Consts and carry pass as they are, xs lose their leading (scanned, fixed) axis, ys
    gain one. With weights stacked over layers (``nn.scan``) the groups of the body hold
    every layer at once, as a rectangular stacked tensor requires."""
    p = eqn.params
    nconst, ncarry = p["num_consts"], p["num_carry"]
    consts, carry, xs = ins[:nconst], ins[nconst:nconst + ncarry], ins[nconst + ncarry:]
    for axes in xs:
        interp.fix(axes[0], "order", "scanned axis", eqn)
    outs = interp.call(p["jaxpr"], list(consts) + list(carry) + [axes[1:] for axes in xs])
    for a, b in zip(carry, outs[:ncarry]):
        interp.unify_all(a, b, eqn)
    ys = []
    for atom, axes in zip(eqn.outvars[ncarry:], outs[ncarry:]):
        length = interp.new(shape_of(atom)[0])
        interp.fix(length, "order", "scanned axis", eqn)
        ys.append((length,) + tuple(axes))
    return list(carry) + ys
