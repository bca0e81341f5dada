"""Channel rules for primitives that move data without computing on it: broadcasts,
reshapes, transposes, concatenation, splitting, slicing, padding, gathers and scatters.

These are where channel structure is born: a reshape from ``H*D`` to ``(H, D)`` refines
the projection's output axis into ``Product(heads, head_dim)``; a split or slice of a fused
qkv output refines it into ``Concat(q, k, v)``; ``jnp.repeat`` of key/value heads
(broadcast then reshape) makes the query heads ``Product(kv_heads, group)``, so removing a
key/value head removes its query heads. Axes that cannot be resized consistently (indexed
vocabularies, strided or dynamic slices of channels, squeezed unit axes) are fixed.
"""
from core import primitives as P
from core.interpreter import register
from core.trace import shape_of


def _kept_or_fixed(interp, layout, out_size, kind, message, eqn):
    interp.fix(layout, kind, message, eqn)
    return interp.new(out_size, interp.types.reason_of(layout))


@register(P.broadcast_in_dim_p)
def broadcast_in_dim(interp, eqn, ins):
    """Operand axes map to ``broadcast_dimensions``; a size-1 axis stretched to n is fixed
    (it cannot shrink), new axes are fresh (``jnp.repeat``'s copies: prunable as such)."""
    in_shape = shape_of(eqn.invars[0])
    out_shape = eqn.params["shape"]
    out = [None] * len(out_shape)
    for i, d in enumerate(eqn.params["broadcast_dimensions"]):
        if in_shape[i] == out_shape[d]:
            out[d] = ins[0][i]
        else:
            interp.fix(ins[0][i], "unit", "size-1 axis broadcast", eqn)
    new = interp.new
    return [tuple(t if t is not None else new(n) for t, n in zip(out, out_shape))]


def _reshape_blocks(in_shape, out_shape):
    """Groups input and output axes into blocks of equal total size, skipping unit axes:
    ``(B, L, H*D) -> (B, L, H, D)`` gives ``[([0], [0]), ([1], [1]), ([2], [2, 3])]``."""
    blocks, i, j = [], 0, 0
    ni, no = len(in_shape), len(out_shape)
    while True:
        while i < ni and in_shape[i] == 1:
            i += 1
        while j < no and out_shape[j] == 1:
            j += 1
        if i == ni or j == no:
            return blocks if i == ni and j == no else None
        bi, bj, pi, pj = [i], [j], in_shape[i], out_shape[j]
        i += 1
        j += 1
        while pi != pj:
            if pi < pj and i < ni:
                bi.append(i)
                pi *= in_shape[i]
                i += 1
            elif pj < pi and j < no:
                bj.append(j)
                pj *= out_shape[j]
                j += 1
            else:
                return None
        blocks.append((bi, bj))


def _unit_pairs(in_shape, out_shape, blocks):
    """Unit axes outside the blocks, paired in order between the same two blocks of the
    input and of the output: ``(H, 1) -> (1, 1, H, 1)`` pairs input axis 1 with output
    axis 3, ``(N, 6, 6, 1) -> (N, 36, 1)`` axis 3 with axis 2. A paired axis keeps its
    channel (a channel axis of size one, e.g. a head_dim or an input with one feature)."""
    def units_by_gap(shape, side):
        inside = {d for block in blocks for d in block[side]}
        gaps = {}
        for d, n in enumerate(shape):
            if n == 1 and d not in inside:
                gap = sum(1 for block in blocks if max(block[side]) < d)
                gaps.setdefault(gap, []).append(d)
        return gaps
    ins, outs = units_by_gap(in_shape, 0), units_by_gap(out_shape, 1)
    return [pair for gap in ins for pair in zip(ins[gap], outs.get(gap, ()))]


@register(P.reshape_p)
def reshape(interp, eqn, ins):
    """Merging axes makes a Product of their layouts; splitting an axis unifies it with a
    Product of fresh axes, so an axis of heads times head_dim gains that structure. Unit
    axes that merely move keep their channel (``_unit_pairs``); others are fixed."""
    in_shape = shape_of(eqn.invars[0])
    out_shape = tuple(eqn.params["new_sizes"])
    blocks = None
    if eqn.params.get("dimensions") is None and 0 not in in_shape:
        blocks = _reshape_blocks(in_shape, out_shape)
    if blocks is None:
        return interp.default_rule(eqn, ins)
    types = interp.types
    src = ins[0]
    out = [None] * len(out_shape)
    pairs = _unit_pairs(in_shape, out_shape, blocks)
    for d_in, d_out in pairs:
        out[d_out] = src[d_in]
    paired = {d_in for d_in, _ in pairs}
    for d, n in enumerate(in_shape):
        if n == 1 and d not in paired:
            interp.fix(src[d], "unit", "unit axis removed by reshape", eqn)
    for bi, bj in blocks:
        merged = types.product([src[d] for d in bi])
        if len(bj) == 1:
            out[bj[0]] = merged
            continue
        parts = [interp.new(out_shape[d]) for d in bj]
        interp.unify(merged, types.product(parts), eqn)
        for d, part in zip(bj, parts):
            out[d] = part
    new = interp.new
    return [tuple(t if t is not None else new(1) for t in out)]


@register(P.transpose_p)
def transpose(interp, eqn, ins):
    return [tuple(ins[0][p] for p in eqn.params["permutation"])]


@register(P.squeeze_p)
def squeeze(interp, eqn, ins):
    dims = set(d % len(ins[0]) for d in eqn.params["dimensions"])
    for d in dims:
        interp.fix(ins[0][d], "unit", "unit axis squeezed away", eqn)
    return [tuple(t for d, t in enumerate(ins[0]) if d not in dims)]


@register(P.concatenate_p)
def concatenate(interp, eqn, ins):
    """The concatenated axis is the Concat of the operands' axes; the others are shared."""
    dim = eqn.params["dimension"]
    first = ins[0]
    for axes in ins[1:]:
        for d, (a, b) in enumerate(zip(first, axes)):
            if d != dim:
                interp.unify(a, b, eqn)
    joined = interp.types.concat([axes[dim] for axes in ins])
    return [first[:dim] + (joined,) + first[dim + 1:]]


@register(P.split_p)
def split(interp, eqn, ins):
    """``jnp.split`` of a fused projection: the axis becomes the Concat of the pieces."""
    axis = eqn.params["axis"]
    pieces = [interp.new(n) for n in eqn.params["sizes"]]
    interp.unify(ins[0][axis], interp.types.concat(pieces), eqn)
    return [ins[0][:axis] + (p,) + ins[0][axis + 1:] for p in pieces]


def _slice_axis(interp, layout, n, start, limit, stride, eqn):
    """Layout of ``x[start:limit:stride]`` along an axis of size n holding ``layout``."""
    types = interp.types
    stride = stride or 1
    if start == 0 and limit == n and stride == 1:
        return layout
    if stride == 1:
        mid = interp.new(limit - start)
        pieces = [interp.new(start), mid, interp.new(n - limit)]
        interp.unify(layout, types.concat(pieces), eqn)
        return mid
    count = len(range(start, limit, stride))
    if n % stride == 0 and start < stride and count == n // stride:
        # Every stride-th channel from ``start``: the axis is Product(count, stride) and the
        # result is the ``start``-th column (interleaved rotary halves, x[..., ::2]).
        outer = interp.new(count)
        columns = [interp.new(1) for _ in range(stride)]
        interp.unify(layout, types.product((outer, types.concat(columns))), eqn)
        # The taken column cannot be removed (the result would vanish): like a squeeze.
        interp.fix(columns[start], "unit", "column taken by a strided slice", eqn)
        return outer
    return _kept_or_fixed(interp, layout, count, "slice", "irregular strided slice", eqn)


@register(P.slice_p)
def slice_(interp, eqn, ins):
    p = eqn.params
    shape = shape_of(eqn.invars[0])
    strides = p["strides"] or (1,) * len(shape)
    return [tuple(_slice_axis(interp, t, n, s, l, st, eqn) for t, n, s, l, st in
                  zip(ins[0], shape, p["start_indices"], p["limit_indices"], strides))]


@register(P.dynamic_slice_p)
def dynamic_slice(interp, eqn, ins):
    """Full-size axes pass; a window at a run-time offset cannot follow pruning."""
    shape = shape_of(eqn.invars[0])
    out = []
    for t, n, m in zip(ins[0], shape, eqn.params["slice_sizes"]):
        out.append(t if n == m else _kept_or_fixed(interp, t, m, "slice",
                                                     "dynamic slice", eqn))
    return [tuple(out)]


@register(P.dynamic_update_slice_p)
def dynamic_update_slice(interp, eqn, ins):
    operand, update = ins[0], ins[1]
    for a, b, n, m in zip(operand, update, shape_of(eqn.invars[0]), shape_of(eqn.invars[1])):
        if n == m:
            interp.unify(a, b, eqn)
        else:
            interp.fix(a, "slice", "dynamic update of a window", eqn)
            interp.fix(b, "slice", "dynamic update of a window", eqn)
    return [operand]


@register(P.pad_p)
def pad(interp, eqn, ins):
    """Padding a channel axis (zero channels appended) makes ``Concat(lo, x, hi)``;
    negative padding crops like a slice; interior padding is fixed."""
    shape = shape_of(eqn.invars[0])
    types = interp.types
    out_shape = shape_of(eqn.outvars[0])
    out = []
    for t, n, m, (lo, hi, interior) in zip(ins[0], shape, out_shape,
                                           eqn.params["padding_config"]):
        if (lo, hi, interior) == (0, 0, 0):
            out.append(t)
        elif interior:
            out.append(_kept_or_fixed(interp, t, m, "slice", "interior padding", eqn))
        else:
            kept = interp.new(n - max(-lo, 0) - max(-hi, 0))
            interp.unify(t, types.concat([interp.new(max(-lo, 0)), kept,
                                          interp.new(max(-hi, 0))]), eqn)
            out.append(types.concat([interp.new(max(lo, 0)), kept, interp.new(max(hi, 0))]))
    return [tuple(out)]


@register(P.rev_p)
def rev(interp, eqn, ins):
    dims = set(eqn.params["dimensions"])
    out = [(_kept_or_fixed(interp, t, shape_of(eqn.invars[0])[d], "order", "reversed axis",
                           eqn) if d in dims else t) for d, t in enumerate(ins[0])]
    return [tuple(out)]


@register(P.gather_p)
def gather(interp, eqn, ins):
    """Embedding lookups and indexing: indexed operand axes (a vocabulary) are fixed;
    fully sliced operand axes pass to the offset dims of the result (the embedding width);
    the other result axes are the index array's batch axes (batch, sequence)."""
    dn = eqn.params["dimension_numbers"]
    sizes = eqn.params["slice_sizes"]
    operand, indices = ins
    op_shape = shape_of(eqn.invars[0])
    out_shape = shape_of(eqn.outvars[0])
    for d in set(dn.start_index_map) | set(dn.collapsed_slice_dims):
        interp.fix(operand[d], "indexed", "axis indexed by a gather", eqn)
    for a, b in zip(dn.operand_batching_dims, dn.start_indices_batching_dims):
        interp.unify(operand[a], indices[b], eqn)
    skip = set(dn.collapsed_slice_dims) | set(dn.operand_batching_dims)
    window = [d for d in range(len(op_shape)) if d not in skip]
    out = [None] * len(out_shape)
    for out_axis, d in zip(dn.offset_dims, window):
        if sizes[d] == op_shape[d] and d not in dn.start_index_map:
            out[out_axis] = operand[d]
        else:
            out[out_axis] = _kept_or_fixed(interp, operand[d], out_shape[out_axis], "indexed",
                                           "partial gather window", eqn)
    batch_axes = [a for a in range(len(out_shape)) if a not in set(dn.offset_dims)]
    for out_axis, layout in zip(batch_axes, indices[:-1]):
        out[out_axis] = layout
    return [tuple(t if t is not None else interp.new(n) for t, n in zip(out, out_shape))]


@register(P.SCATTERS)
def scatter(interp, eqn, ins):
    """Updates written into an operand: window axes of the updates tie to the operand's
    unscattered axes when full size; scattered axes are fixed."""
    dn = eqn.params["dimension_numbers"]
    operand, _, updates = ins[0], ins[1], ins[2]
    op_shape, up_shape = shape_of(eqn.invars[0]), shape_of(eqn.invars[2])
    for d in set(dn.scatter_dims_to_operand_dims) | set(dn.inserted_window_dims):
        interp.fix(operand[d], "indexed", "axis indexed by a scatter", eqn)
    skip = set(dn.inserted_window_dims) | set(getattr(dn, "operand_batching_dims", ()))
    window = [d for d in range(len(op_shape)) if d not in skip]
    for up_axis, d in zip(dn.update_window_dims, window):
        if up_shape[up_axis] == op_shape[d]:
            interp.unify(updates[up_axis], operand[d], eqn)
        else:
            interp.fix(updates[up_axis], "indexed", "partial scatter window", eqn)
            interp.fix(operand[d], "indexed", "partial scatter window", eqn)
    for a, t in enumerate(updates):
        if a not in set(dn.update_window_dims):
            interp.fix(t, "indexed", "scattered axis", eqn)
    return [operand]

