"""Channel groups on every model of the zoo, with hand-derived expectations for ResNet-20,
MobileNetV2, both ViTs, the grouped-query LM and U-Net.

Weights are random numpy arrays shaped by ``jax.eval_shape(module.init)``: the analysis
reads only shapes, and skipping ``init`` keeps XLA compilation out of these tests.
"""
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core.interpreter import UnsupportedPrimitiveWarning
from models import zoo
from pruning import analyze


@functools.lru_cache(maxsize=None)
def build(name, tiny=True, batch=2):
    """``(fn, variables, x)`` like ``zoo.instantiate``, without compiling anything."""
    if name not in zoo.ZOO:
        pytest.skip(f"{name} is not in the zoo yet")
    entry = zoo.ZOO[name]
    module = entry.build_tiny() if tiny else entry.build()
    shape = (batch,) + tuple((entry.tiny_input_shape or entry.input_shape) if tiny
                             else entry.input_shape)
    rng = np.random.default_rng(0)
    if entry.input_vocab:
        x = jnp.asarray(rng.integers(0, entry.input_vocab, shape), entry.input_dtype)
    else:
        x = jnp.asarray(rng.normal(size=shape), entry.input_dtype)
    if hasattr(module, "init"):
        shapes = jax.eval_shape(module.init, jax.random.key(0), x)
        fn = lambda v, inp: module.apply(v, inp, train=False)
    else:   # NNX: the entry builds (fn, state); keep fn, take only the state's shapes
        built = []
        shapes = jax.eval_shape(lambda key: built.append(module(key)) or built[-1][1],
                                jax.random.key(0))
        fn = built[0][0]
    variables = jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype), shapes)
    return fn, variables, x


@functools.lru_cache(maxsize=None)
def groups_of(name, tiny=True):
    fn, variables, x = build(name, tiny)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        analysis = analyze(fn, variables, x)
    unsupported = [str(w.message) for w in caught
                   if issubclass(w.category, UnsupportedPrimitiveWarning)]
    return analysis, unsupported


def params_of(group):
    """Member ``(path, axis)`` pairs in the 'params' collection (batch stats left out)."""
    return {(m.path, m.axis) for m in group.members if m.path.startswith("params/")}


def group_with(analysis, path, axis, prunable=True):
    found = [g for g in analysis.groups if g.prunable == prunable
             and any(m.path == path and m.axis == axis for m in g.members)]
    assert len(found) == 1, f"{path} axis {axis}: {len(found)} groups"
    return found[0]


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_every_zoo_model_gets_sensible_groups(name):
    analysis, unsupported = groups_of(name)
    assert not unsupported, unsupported
    assert analysis.prunable(), "no prunable group"
    shapes = {p: v.aval.shape for p, v in analysis.traced.param_invars()}
    for g in analysis.groups:
        assert g.size > 0 and g.members
        assert g.prunable == (g.reason is None)
        for m in g.members:
            assert m.path in shapes and 0 <= m.axis < len(shapes[m.path])
            assert m.index_map.shape[0] == g.size
            assert m.index_map.min() >= 0 and m.index_map.max() < shapes[m.path][m.axis]
            # Channels of one group own disjoint positions (a Product axis is shared by
            # several groups, but each position belongs to one channel of each).
            flat = m.index_map.ravel()
            assert len(set(flat.tolist())) == flat.size, f"{m.path} axis {m.axis}"
    # Whatever produces the model's output channels is never prunable.
    out = analysis.traced.jaxpr.outvars[0]
    on_output = [gid for gid, _ in analysis.axis_groups(out, len(out.aval.shape) - 1)]
    assert on_output and all(gid is not None and not analysis.groups[gid].prunable
                             for gid in on_output)
    assert "ChannelGroup" in str(analysis.groups[0])


RESNET20_STAGE_BLOCKS = 3


def test_resnet20_groups_by_hand():
    analysis, _ = groups_of("resnet20", tiny=False)
    # 3 residual streams (one per stage) + one inner group per block (9 blocks).
    assert len(analysis.prunable()) == 3 + 3 * RESNET20_STAGE_BLOCKS
    stem = group_with(analysis, "params/stem/kernel", 3)
    expected = {("params/stem/kernel", 3), ("params/stem_bn/scale", 0),
                ("params/stem_bn/bias", 0), ("params/stage1_block0/conv1/kernel", 2),
                ("params/stage1_block0/proj/kernel", 2)}
    for b in range(3):
        expected |= {(f"params/stage0_block{b}/conv1/kernel", 2),
                     (f"params/stage0_block{b}/conv2/kernel", 3),
                     (f"params/stage0_block{b}/bn2/scale", 0),
                     (f"params/stage0_block{b}/bn2/bias", 0)}
    assert params_of(stem) == expected and stem.size == 16
    assert {("batch_stats/stem_bn/mean", 0), ("batch_stats/stem_bn/var", 0)} <= {
        (m.path, m.axis) for m in stem.members}
    inner = group_with(analysis, "params/stage1_block1/conv1/kernel", 3)
    assert params_of(inner) == {("params/stage1_block1/conv1/kernel", 3),
                                ("params/stage1_block1/bn1/scale", 0),
                                ("params/stage1_block1/bn1/bias", 0),
                                ("params/stage1_block1/conv2/kernel", 2)}
    last = group_with(analysis, "params/head/kernel", 0)
    assert last.size == 64 and ("params/stage2_block0/proj/kernel", 3) in params_of(last)
    logits = group_with(analysis, "params/head/kernel", 1, prunable=False)
    assert params_of(logits) == {("params/head/kernel", 1), ("params/head/bias", 0)}
    assert "model output" in logits.reason
    image = group_with(analysis, "params/stem/kernel", 2, prunable=False)
    assert "model input" in image.reason


def test_mobilenetv2_groups_by_hand():
    analysis, _ = groups_of("mobilenetv2", tiny=False)
    # 7 stages -> 7 residual streams, 16 expanded blocks (t=6), the stem (feeding block 0
    # with t=1) and the 1280-wide last conv.
    assert len(analysis.prunable()) == 7 + 16 + 1 + 1
    stem = group_with(analysis, "params/stem/kernel", 3)
    assert params_of(stem) == {
        ("params/stem/kernel", 3), ("params/stem_bn/scale", 0), ("params/stem_bn/bias", 0),
        ("params/block0/depthwise/kernel", 3), ("params/block0/depthwise_bn/scale", 0),
        ("params/block0/depthwise_bn/bias", 0), ("params/block0/project/kernel", 2)}
    expand = group_with(analysis, "params/block5/expand/kernel", 3)
    assert expand.size == 32 * 6
    assert params_of(expand) == {
        ("params/block5/expand/kernel", 3), ("params/block5/expand_bn/scale", 0),
        ("params/block5/expand_bn/bias", 0), ("params/block5/depthwise/kernel", 3),
        ("params/block5/depthwise_bn/scale", 0), ("params/block5/depthwise_bn/bias", 0),
        ("params/block5/project/kernel", 2)}
    # Stage (6, 32, 3, 2) is blocks 3-5: one stream through their residual adds.
    stream = group_with(analysis, "params/block3/project/kernel", 3)
    assert {(f"params/block{b}/project/kernel", 3) for b in (3, 4, 5)} | {
        (f"params/block{b}/expand/kernel", 2) for b in (4, 5, 6)} <= params_of(stream)
    assert stream.size == 32


@pytest.mark.parametrize("name", ["vit", "vit_fused"])
def test_vit_groups_by_hand(name):
    analysis, _ = groups_of(name)
    heads, head_dim, depth, mlp = 2, 8, 2, 32          # vit_tiny: dim 16, 2 heads, 2 blocks
    per_block = 4 if name == "vit" else 3              # fused: q, k, v share head_dim
    assert len(analysis.prunable()) == 1 + per_block * depth
    width = group_with(analysis, "params/patch_embed/kernel", 3)
    assert {("params/cls_token", 2), ("params/pos_embed", 2), ("params/head/kernel", 0),
            ("params/final_norm/scale", 0), ("params/block1/norm2/bias", 0)} <= params_of(width)
    assert width.size == 16
    mlp_group = group_with(analysis, "params/block0/mlp_fc1/kernel", 1)
    assert mlp_group.size == mlp and params_of(mlp_group) == {
        ("params/block0/mlp_fc1/kernel", 1), ("params/block0/mlp_fc1/bias", 0),
        ("params/block0/mlp_fc2/kernel", 0)}
    if name == "vit":
        a = "params/block0/attn"
        head_group = group_with(analysis, f"{a}/query/kernel", 1)
        assert head_group.size == heads
        assert params_of(head_group) == {
            (f"{a}/{n}/kernel", 1) for n in ("query", "key", "value")} | {
            (f"{a}/{n}/bias", 0) for n in ("query", "key", "value")} | {(f"{a}/out/kernel", 0)}
        qk = group_with(analysis, f"{a}/query/kernel", 2)
        v = group_with(analysis, f"{a}/value/kernel", 2)
        assert qk.size == v.size == head_dim and qk is not v
        assert (f"{a}/out/kernel", 1) in params_of(v)
    else:
        qkv = "params/block0/attn/qkv/kernel"
        head_group = next(g for g in analysis.prunable() if g.size == heads
                          and any(m.path == qkv for m in g.members))
        assert head_group.member(qkv).index_map.tolist() == [
            [t * heads * head_dim + h * head_dim + d for t in range(3) for d in range(head_dim)]
            for h in range(heads)]
        dim_group = next(g for g in analysis.prunable() if g.size == head_dim
                         and any(m.path == qkv for m in g.members))
        assert dim_group.member("params/block0/attn/out/kernel", 0).index_map.tolist() == [
            [h * head_dim + d for h in range(heads)] for d in range(head_dim)]


def test_transformer_lm_groups_by_hand():
    analysis, _ = groups_of("transformer_lm")
    heads, kv_heads, head_dim, depth = 4, 2, 4, 2
    # Per block: kv heads, query heads within a kv group, rotary pairs of q/k head_dim,
    # v head_dim, SwiGLU hidden; plus the tied embedding width.
    assert len(analysis.prunable()) == 1 + 5 * depth
    a = "params/block0/attn"
    kv = next(g for g in analysis.prunable() if g.size == kv_heads
              and (f"{a}/value/kernel", 1) in params_of(g))
    assert params_of(kv) == {(f"{a}/query/kernel", 1), (f"{a}/key/kernel", 1),
                             (f"{a}/value/kernel", 1), (f"{a}/out/kernel", 0)}
    per_kv = heads // kv_heads * head_dim
    assert kv.member(f"{a}/query/kernel").index_map.tolist() == [
        list(range(j * per_kv, (j + 1) * per_kv)) for j in range(kv_heads)]
    rotary = next(g for g in analysis.prunable()
                  if params_of(g) == {(f"{a}/query/kernel", 1), (f"{a}/key/kernel", 1)})
    assert rotary.size == head_dim // 2
    width = group_with(analysis, "params/embed/embedding", 1)
    assert width.size == 16 and ("params/final_norm/scale", 0) in params_of(width)
    vocab = group_with(analysis, "params/embed/embedding", 0, prunable=False)
    assert vocab.size == 256


def test_unet_groups_by_hand():
    analysis, _ = groups_of("unet")
    # 2 convs in each of down0, down1, bottleneck, up1, up0, plus 2 transposed convs.
    assert len(analysis.prunable()) == 12
    skip = group_with(analysis, "params/down0/conv2/kernel", 3)
    assert skip.member("params/up0/conv1/kernel").index_map[:, 0].tolist() == [0, 1, 2, 3]
    assert ("params/down1/conv1/kernel", 2) in params_of(skip)
    upsampled = group_with(analysis, "params/upsample0/kernel", 3)
    assert upsampled.member("params/up0/conv1/kernel").index_map[:, 0].tolist() == [4, 5, 6, 7]
    head = group_with(analysis, "params/head/kernel", 3, prunable=False)
    assert "model output" in head.reason
