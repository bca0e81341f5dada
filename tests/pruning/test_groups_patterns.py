"""Channel groups on small hand-written JAX functions, one pattern at a time: attention
(fused qkv split or reshaped, grouped-query with rotary and tied embeddings), grouped and
depthwise convs, concatenation, padding, strided slices, GroupNorm, control flow,
unsupported primitives and model outputs. Expected members are derived by hand."""
import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import Primitive

from core.interpreter import UnsupportedPrimitiveWarning
from pruning import analyze, find_groups, keep_to_masks, masked, prune


def _normal(seed, shape):
    """Random weights from numpy: tracing needs no compiled JAX random ops."""
    return jnp.asarray(0.1 * np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _group_with(groups, path, axis, prunable=None):
    found = [g for g in groups if any(m.path == path and m.axis == axis for m in g.members)]
    if prunable is not None:
        found = [g for g in found if g.prunable == prunable]
    return found


def _members(group):
    return {(m.path, m.axis) for m in group.members}


# ------------------------------------------------------------------------ attention
E, H, D = 8, 2, 3


def _split_qkv_attention(p, x):
    """One fused qkv projection split into q, k, v, each reshaped into heads."""
    b, l, _ = x.shape
    q, k, v = jnp.split(x @ p["qkv"], 3, axis=-1)
    q, k, v = (t.reshape(b, l, H, D) for t in (q, k, v))
    w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(D), axis=-1)
    o = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, l, H * D)
    return x + o @ p["out"]


def _attention_params(key=0):
    k1, k2 = 2 * key, 2 * key + 1
    return {"qkv": _normal(k1, (E, 3 * H * D)), "out": _normal(k2, (H * D, E))}


def test_fused_qkv_split_gives_heads_qk_dim_and_v_dim():
    p, x = _attention_params(), jnp.ones((2, 5, E))
    groups = find_groups(_split_qkv_attention, p, x)
    prunable = [g for g in groups if g.prunable]
    assert sorted(g.size for g in prunable) == sorted([D, D, H])
    heads = next(g for g in prunable if g.size == H)
    # Head h owns positions h*D .. h*D+D-1 of each of the q, k and v thirds.
    expected = [[h * D + d + part * H * D for part in range(3) for d in range(D)]
                for h in range(H)]
    assert heads.member("qkv", 1).index_map.tolist() == expected
    assert heads.member("out", 0).index_map.tolist() == [[h * D + d for d in range(D)]
                                                         for h in range(H)]
    qk = next(g for g in prunable if g.size == D and len(g.members) == 1)
    assert qk.member("qkv", 1).index_map.tolist() == [
        [h * D + d + part * H * D for part in (0, 1) for h in range(H)] for d in range(D)]
    v_dim = next(g for g in prunable if g.size == D and len(g.members) == 2)
    assert _members(v_dim) == {("qkv", 1), ("out", 0)}
    # The embedding axis is added to the input: not prunable.
    assert not _group_with(groups, "qkv", 0)[0].prunable


def test_fused_qkv_reshaped_first_shares_head_dim_across_q_k_v():
    """``qkv.reshape(b, l, 3, H, D)`` materialises one (3, H, D) tensor: a narrower model
    must keep it rectangular, so q, k and v keep the same head_dim."""
    def fn(p, x):
        b, l, _ = x.shape
        qkv = (x @ p["qkv"]).reshape(b, l, 3, H, D)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k), axis=-1)
        return x + jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, l, H * D) @ p["out"]

    groups = find_groups(fn, _attention_params(), jnp.ones((2, 5, E)))
    prunable = [g for g in groups if g.prunable]
    assert sorted(g.size for g in prunable) == sorted([H, D])
    for g in prunable:
        assert _members(g) == {("qkv", 1), ("out", 0)}


def test_linen_multi_head_attention_has_three_groups():
    import flax.linen as nn

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            y = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)(x)
            return nn.Dense(3)(x + y)

    x = jnp.ones((2, 5, 6))
    module = Block()
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)   # no compilation
    variables = jax.tree_util.tree_map(lambda s: _normal(0, s.shape), shapes)
    groups = find_groups(module.apply, variables, x)
    prunable = [g for g in groups if g.prunable]
    prefix = "params/MultiHeadDotProductAttention_0"
    heads = _group_with(prunable, f"{prefix}/query/kernel", 1)[0]
    assert heads.size == 2
    assert {(f"{prefix}/{n}/kernel", 1) for n in ("query", "key", "value")} | {
        (f"{prefix}/out/kernel", 0)} <= _members(heads)
    qk = _group_with(prunable, f"{prefix}/query/kernel", 2)[0]
    assert _members(qk) == {(f"{prefix}/{n}/{w}", a) for n in ("query", "key")
                            for w, a in (("kernel", 2), ("bias", 1))}
    v = _group_with(prunable, f"{prefix}/value/kernel", 2)[0]
    assert (f"{prefix}/out/kernel", 1) in _members(v) and qk is not v
    assert len(prunable) == 3


V, HQ, KV, HD, FF = 11, 4, 2, 4, 12


def _gqa_lm(p, ids):
    """Tied embedding, RMSNorm, grouped-query attention with rotary and repeat, SwiGLU."""
    def rms(x, w):
        return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * w

    def rotary(x):
        half = x.shape[-1] // 2
        ang = jnp.arange(x.shape[1])[:, None] * (1e4 ** (-jnp.arange(half) / half))[None]
        cos, sin = jnp.cos(ang)[None, :, None], jnp.sin(ang)[None, :, None]
        x1, x2 = x[..., :half], x[..., half:]
        return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    x = p["embed"][ids]
    b, l, _ = x.shape
    h = rms(x, p["norm1"])
    q = rotary((h @ p["wq"]).reshape(b, l, HQ, HD))
    k = rotary((h @ p["wk"]).reshape(b, l, KV, HD))
    v = (h @ p["wv"]).reshape(b, l, KV, HD)
    k, v = jnp.repeat(k, HQ // KV, axis=2), jnp.repeat(v, HQ // KV, axis=2)
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    s = jnp.where(jnp.tril(jnp.ones((l, l), bool)), s, -1e9)
    o = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), v).reshape(b, l, HQ * HD)
    x = x + o @ p["wo"]
    h = rms(x, p["norm2"])
    x = x + (jax.nn.silu(h @ p["gate"]) * (h @ p["up"])) @ p["down"]
    return rms(x, p["norm_f"]) @ p["embed"].T


def _gqa_params():
    ks = [1 * 10 + i for i in range(8)]
    shapes = {"embed": (V, E), "wq": (E, HQ * HD), "wk": (E, KV * HD), "wv": (E, KV * HD),
              "wo": (HQ * HD, E), "gate": (E, FF), "up": (E, FF), "down": (FF, E)}
    p = {n: _normal(k, s) for k, (n, s) in zip(ks, shapes.items())}
    p.update(norm1=jnp.ones(E), norm2=jnp.ones(E), norm_f=jnp.ones(E))
    return p


def test_grouped_query_attention_removing_a_kv_head_removes_its_query_heads():
    groups = find_groups(_gqa_lm, _gqa_params(), jnp.zeros((2, 6), jnp.int32))
    prunable = [g for g in groups if g.prunable]
    group = HQ // KV
    kv_heads = next(g for g in prunable if ("wk", 1) in _members(g) and g.size == KV)
    assert _members(kv_heads) == {("wq", 1), ("wk", 1), ("wv", 1), ("wo", 0)}
    width = group * HD   # query positions per key/value head
    assert kv_heads.member("wq", 1).index_map.tolist() == [
        list(range(j * width, (j + 1) * width)) for j in range(KV)]
    assert kv_heads.member("wk", 1).index_map.tolist() == [
        list(range(j * HD, (j + 1) * HD)) for j in range(KV)]
    # The query heads within a group (which copy of the repeat) form their own group.
    within = next(g for g in prunable if _members(g) == {("wq", 1), ("wo", 0)})
    assert within.size == group
    # Rotary pairs channel i with i + HD/2: q/k head_dim shrinks in pairs.
    rotary = next(g for g in prunable if _members(g) == {("wq", 1), ("wk", 1)})
    assert rotary.size == HD // 2
    assert rotary.member("wk", 1).index_map[0].tolist() == [0, HD // 2, HD, HD + HD // 2]
    v_dim = next(g for g in prunable if _members(g) == {("wv", 1), ("wo", 0)})
    assert v_dim.size == HD
    # Tied embedding: the width is prunable (embed axis 1 with the residual stream), the
    # vocabulary is indexed and reaches the output.
    width_group = _group_with(prunable, "embed", 1)[0]
    assert {("norm1", 0), ("wq", 0), ("wo", 1), ("down", 1), ("norm_f", 0)} <= _members(
        width_group)
    vocab = _group_with(groups, "embed", 0)[0]
    assert not vocab.prunable
    assert len(prunable) == 6   # width, ffn, kv heads, query-in-group, rotary pairs, v dim


# ----------------------------------------------------------------------- convolutions
def _conv(x, w, groups=1, stride=1):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=groups)


def test_grouped_and_depthwise_convs():
    def fn(p, x):
        h = jax.nn.relu(_conv(x, p["c1"]))            # 3 -> 8
        h = jax.nn.relu(_conv(h, p["grouped"], 2))   # 8 -> 6 in 2 groups of 4 -> 3
        h = _conv(h, p["dw"], 6)                      # depthwise, multiplier 2 -> 12
        return jnp.mean(_conv(h, p["c2"]), (1, 2))

    ks = [2 * 10 + i for i in range(4)]
    p = {"c1": _normal(ks[0], (3, 3, 3, 8)), "grouped": _normal(ks[1], (3, 3, 4, 6)),
         "dw": _normal(ks[2], (3, 3, 1, 12)), "c2": _normal(ks[3], (1, 1, 12, 5))}
    groups = [g for g in find_groups(fn, p, jnp.ones((1, 6, 6, 3))) if g.prunable]
    conv_groups = next(g for g in groups if g.size == 2 and ("c1", 3) in _members(g))
    assert conv_groups.member("c1", 3).index_map.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert conv_groups.member("grouped", 3).index_map.tolist() == [[0, 1, 2], [3, 4, 5]]
    in_group = next(g for g in groups if ("grouped", 2) in _members(g))
    assert in_group.size == 4 and in_group.member("c1", 3).index_map.tolist() == [
        [c, c + 4] for c in range(4)]
    per_group_out = next(g for g in groups if g.size == 3)
    assert per_group_out.member("grouped", 3).index_map.tolist() == [[0, 3], [1, 4], [2, 5]]
    # Depthwise with multiplier 2: output channel 2c+m belongs to input channel c.
    assert conv_groups.member("dw", 3).index_map.tolist() == [
        [0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
    multiplier = next(g for g in groups if _members(g) == {("dw", 3), ("c2", 2)})
    assert multiplier.size == 2


def test_concat_pad_and_strided_slice_offsets():
    def fn(p, x):
        a = _conv(x, p["a"])                                  # 4 channels
        b = _conv(x, p["b"])                                  # 6 channels
        h = jnp.concatenate([a, b], -1)                       # 10
        h = jnp.pad(h, ((0, 0), (0, 0), (0, 0), (1, 1)))      # 12: zero channels on the sides
        return _conv(h, p["c"])[..., ::2]                     # every other output channel

    ks = [3 * 10 + i for i in range(3)]
    p = {"a": _normal(ks[0], (1, 1, 2, 4)), "b": _normal(ks[1], (1, 1, 2, 6)),
         "c": _normal(ks[2], (1, 1, 12, 10))}
    groups = find_groups(fn, p, jnp.ones((1, 4, 4, 2)))
    ga = _group_with(groups, "a", 3)[0]
    gb = _group_with(groups, "b", 3)[0]
    assert ga.prunable and gb.prunable
    assert ga.member("c", 2).index_map[:, 0].tolist() == [1, 2, 3, 4]
    assert gb.member("c", 2).index_map[:, 0].tolist() == list(range(5, 11))
    padding = [g for g in groups if _members(g) == {("c", 2)}]
    assert sorted(g.member("c", 2).index_map[0, 0] for g in padding) == [0, 11]
    # [..., ::2] views the 10 outputs as 5 rows x 2 columns and reads column 0: the rows
    # reach the output; the unread column 1 (odd channels) can go as a whole.
    rows = _group_with(groups, "c", 3, prunable=False)[0]
    assert rows.member("c", 3).index_map.tolist() == [[2 * r, 2 * r + 1] for r in range(5)]
    dropped = _group_with(groups, "c", 3, prunable=True)
    assert [g.member("c", 3).index_map.tolist() for g in dropped] == [[[1, 3, 5, 7, 9]]]


def test_group_norm_splits_channels_into_norm_groups():
    def fn(p, x):
        h = _conv(x, p["c1"])
        b, hh, ww, c = h.shape
        g = h.reshape(b, hh, ww, 2, c // 2)
        g = (g - g.mean((1, 2, 4), keepdims=True)) / jnp.sqrt(g.var((1, 2, 4), keepdims=True)
                                                             + 1e-5)
        h = g.reshape(b, hh, ww, c) * p["scale"]
        return jnp.mean(_conv(h, p["c2"]), (1, 2))

    ks = [4 * 10 + i for i in range(2)]
    p = {"c1": _normal(ks[0], (3, 3, 1, 8)), "scale": jnp.ones(8),
         "c2": _normal(ks[1], (1, 1, 8, 3))}
    prunable = [g for g in find_groups(fn, p, jnp.ones((1, 4, 4, 1))) if g.prunable]
    assert sorted(g.size for g in prunable) == [2, 4]
    norm_groups = next(g for g in prunable if g.size == 2)
    assert norm_groups.member("scale", 0).index_map.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_scan_cond_and_while_bodies_are_entered():
    def fn(p, x):
        h = x @ p["w_in"]
        h = jax.lax.cond(jnp.sum(x) > 0, lambda t: t * p["gain"], lambda t: t, h)

        def layer(carry, w):
            return jax.nn.relu(carry @ w), None

        h, _ = jax.lax.scan(layer, h, p["stack"])
        h = jax.lax.fori_loop(0, 2, lambda i, t: t * p["gain"], h)
        return h @ p["w_out"]

    ks = [5 * 10 + i for i in range(3)]
    p = {"w_in": 10 * _normal(ks[0], (3, 6)), "gain": jnp.ones(6),
         "stack": 10 * _normal(ks[1], (4, 6, 6)), "w_out": _normal(ks[2], (6, 2))}
    x = jnp.asarray(np.random.default_rng(53).normal(size=(2, 3)), jnp.float32)
    groups = find_groups(fn, p, x)
    hidden = _group_with(groups, "w_in", 1)[0]
    assert hidden.prunable
    assert _members(hidden) == {("w_in", 1), ("gain", 0), ("stack", 1), ("stack", 2),
                                ("w_out", 0)}
    layers = _group_with(groups, "stack", 0)[0]
    assert not layers.prunable and "scanned" in layers.reason
    # Prunable means pruned consistently inside the bodies: the masked and the pruned model
    # both equal the same function on hand-narrowed parameters.
    kept = np.array([0, 2, 4, 5])
    narrow = {"w_in": p["w_in"][:, kept], "gain": p["gain"][kept],
              "stack": p["stack"][:, kept][:, :, kept], "w_out": p["w_out"][kept]}
    want = fn(narrow, x)
    assert float(jnp.min(jnp.abs(want))) > 1e-2
    keep = {hidden.id: kept}
    np.testing.assert_allclose(masked(fn, groups)(p, keep_to_masks(groups, keep), x), want,
                               rtol=1e-5, atol=1e-6)
    pruned = prune(fn, p, x, keep=keep)
    np.testing.assert_allclose(pruned.fn(pruned.variables, x), want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------- unsupported ops, model outputs
mystery_p = Primitive("mystery_op")
mystery_p.def_impl(lambda x: x)
mystery_p.def_abstract_eval(lambda x: x)


def _with_mystery(p, x):
    h = jax.nn.relu(x @ p["w1"])
    h = mystery_p.bind(h)
    return h @ p["w2"] + (x @ p["w3"]) @ p["w4"]


MYSTERY_LINE = inspect.getsourcelines(_with_mystery)[1] + 2


def test_unsupported_primitive_warns_once_and_fixes_what_it_touches():
    ks = [6 * 10 + i for i in range(4)]
    p = {"w1": _normal(ks[0], (3, 5)), "w2": _normal(ks[1], (5, 2)),
         "w3": _normal(ks[2], (3, 7)), "w4": _normal(ks[3], (7, 2))}
    x = jnp.ones((2, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        analysis = analyze(_with_mystery, p, x)
    messages = [str(w.message) for w in caught
                if issubclass(w.category, UnsupportedPrimitiveWarning)]
    assert len(messages) == 1
    assert "mystery_op" in messages[0]
    assert f"test_groups_patterns.py:{MYSTERY_LINE}" in messages[0]
    touched = _group_with(analysis.groups, "w1", 1)[0]
    assert not touched.prunable and "mystery_op" in touched.reason
    assert f"test_groups_patterns.py:{MYSTERY_LINE}" in touched.reason
    untouched = _group_with(analysis.groups, "w3", 1)[0]
    assert untouched.prunable          # the rest of the model is still analysed
    assert "mystery_op" in analysis.unsupported


def test_groups_reaching_the_output_are_not_prunable():
    def fn(p, x):
        h = jax.nn.relu(x @ p["w1"])
        return h @ p["w2"], h                       # the hidden layer is ALSO an output

    p = {"w1": jnp.ones((3, 5)), "w2": jnp.ones((5, 2))}
    groups = find_groups(fn, p, jnp.ones((2, 3)))
    hidden = _group_with(groups, "w1", 1)[0]
    assert not hidden.prunable and "model output (output 1)" in hidden.reason
    logits = _group_with(groups, "w2", 1)[0]
    assert not logits.prunable and "model output (output 0)" in logits.reason
    inputs = _group_with(groups, "w1", 0)[0]
    assert not inputs.prunable and "model input" in inputs.reason
    text = str(hidden)
    assert "w1" in text and "w2" in text and "test_groups_patterns.py" in text


def test_every_variable_has_axis_types_even_inside_nested_jaxprs():
    p, x = _attention_params(), jnp.ones((2, 5, E))
    analysis = analyze(_split_qkv_attention, p, x)
    jaxpr = analysis.traced.jaxpr
    split = next(e for e in jaxpr.eqns if e.primitive.name == "split")
    heads = next(g for g in analysis.groups if g.prunable and g.size == H)
    q = split.outvars[0]
    q_axis = analysis.axis_groups(q, 2)
    assert {gid for gid, _ in q_axis} >= {heads.id}
    sizes = {heads.id: 1}
    assert analysis.axis_size(analysis.scope.env[q][2], sizes) == D   # (1 head) x D


def test_variables_inside_nested_jaxprs_have_axis_types():
    def fn(p, x):
        return jax.nn.relu(x @ p["w"]) @ p["v"]      # relu: custom_jvp_call -> jit -> max

    analysis = analyze(fn, {"w": jnp.ones((3, 5)), "v": jnp.ones((5, 2))}, jnp.ones((2, 3)))
    hidden = _group_with(analysis.groups, "w", 1)[0]
    index = next(iter(analysis.scope.children))
    assert analysis.scope.jaxpr.eqns[index].primitive.name == "custom_jvp_call"
    custom_jvp = analysis.scope.children[index][0]
    jitted = next(iter(custom_jvp.children.values()))[0]
    relu_out = jitted.jaxpr.outvars[0]
    assert [gid for gid, _ in analysis.axis_groups(relu_out, 1, jitted)] == [hidden.id]
    assert analysis.axis_groups(relu_out, 1, jitted)[0][1][:, 0].tolist() == list(range(5))


@pytest.mark.parametrize("method", ["nearest", "linear"])
def test_resize_passes_channels_through_and_fixes_space(method):
    def fn(p, x):
        h = _conv(x, p["c1"])
        h = jax.image.resize(h, (h.shape[0], 8, 8, h.shape[3]), method)
        h = jax.lax.dynamic_slice_in_dim(h, 1, 6, axis=1)       # a crop at a traced offset
        return jnp.mean(_conv(h, p["c2"]), (1, 2))

    p = {"c1": _normal(80, (3, 3, 2, 5)), "c2": _normal(81, (1, 1, 5, 3))}
    groups = find_groups(fn, p, jnp.ones((1, 4, 4, 2)))
    channels = _group_with(groups, "c1", 3)[0]
    assert channels.prunable and _members(channels) == {("c1", 3), ("c2", 2)}
    assert len([g for g in groups if g.prunable]) == 1
