"""The pruned model equals the same model class built narrower, with weights copied by hand.

The zoo's exactness tests compare two outputs of this library (physically pruned against
masked), so a mistake both share (a wrong index map, channels coupled into the wrong group,
a slice applied on the wrong axis) passes them. Here the reference owes nothing to the
library: the zoo's own model class is instantiated at the narrower widths, and the kept
slices of the original weights are copied into it by the rule tables below, written from
the architecture (which axis of which parameter carries which channels), never from a
group's index map. The library only chooses nothing: the keep-sets are drawn here and handed
to ``prune`` through the groups that own a named parameter axis. Both must give the same
logits on real Fashion-MNIST test images.

Covered: a plain conv net (Flax NNX, no residuals), ResNet stages with residual coupling and
block-internal widths, MLP hidden widths (MLP-Mixer's token- and channel-mixing MLPs) and
attention heads (ViT with linen attention and with one fused qkv projection).
"""
import functools
import re

import jax
import numpy as np
import pytest

from core.trace import path_to_str
from data import pipeline
from models import mixer, nnx_cnn, resnet, vit
from pruning import analyze, prune


@functools.lru_cache(maxsize=1)
def fashion_mnist_batch(n=16):
    dataset = pipeline.load_dataset("fashion_mnist", 5000, 0, limit=n)
    return pipeline.normalize(dataset.test[0][:n], dataset.mean, dataset.std)


def perturbed(variables, seed):
    """Every weight moved off its initial value (zero biases, unit LayerNorm scales and
    identity BatchNorm statistics would hide a slice taken from the wrong channels)."""
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    new = []
    for path, leaf in leaves:
        leaf = np.asarray(leaf)
        if path_to_str(path).endswith("/var"):
            new.append(rng.uniform(0.5, 1.5, leaf.shape).astype(leaf.dtype))
        else:
            new.append((leaf + 0.2 * rng.normal(size=leaf.shape)).astype(leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, new)


def take(array, per_axis):
    """``array`` with only the listed positions along each axis (None keeps the axis)."""
    for axis, index in enumerate(per_axis):
        if index is not None:
            array = np.take(array, np.asarray(index), axis=axis)
    return array


def narrow_by_hand(variables, rules, keep):
    """Copies the kept slices: ``rules`` is a list of (regex on the parameter path, one
    entry per axis: a keep-set name, with ``{b}`` filled from the regex, or None)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    sliced = []
    for path, leaf in leaves:
        name = path_to_str(path)
        found = [(m, axes) for pattern, axes in rules
                 for m in [re.fullmatch(pattern, name)] if m]
        assert len(found) == 1, f"{name}: {len(found)} slicing rules match, want one"
        match, axes = found[0]
        assert len(axes) == np.ndim(leaf), f"{name}: rule has {len(axes)} axes"
        names = [a and a.format(**match.groupdict()) for a in axes]
        sliced.append(take(np.asarray(leaf), [keep[n] if n else None for n in names]))
    return jax.tree_util.tree_unflatten(treedef, sliced)


def group_owning(analysis, path, axis, size=None):
    """The one prunable group with a member on ``path``'s ``axis`` (and of ``size``)."""
    found = [g for g in analysis.prunable()
             if any(m.path == path and m.axis == axis for m in g.members)
             and (size is None or g.size == size)]
    assert len(found) == 1, f"{len(found)} prunable groups own {path} axis {axis}"
    return found[0]


def shapes(variables):
    return {path_to_str(p): tuple(np.shape(leaf))
            for p, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}


def random_keep(rng, sizes_and_counts):
    """Sorted random keep-sets, not prefixes, so the channel order is tested too."""
    return {name: np.sort(rng.choice(size, count, replace=False))
            for name, (size, count) in sizes_and_counts.items()}


def check(fn, variables, narrow_fn, narrow_template, rules, keep, owners):
    """``owners[name] = (path, axis[, size])`` names the library group of keep-set ``name``."""
    x = fashion_mnist_batch()
    analysis = analyze(fn, variables, x)
    groups = {name: group_owning(analysis, *owner) for name, owner in owners.items()}
    assert len({g.id for g in groups.values()}) == len(groups), \
        "two independent channel sets fell into one group"
    pruned = prune(fn, variables, x, keep={g.id: keep[n] for n, g in groups.items()},
                   analysis=analysis)
    hand = narrow_by_hand(variables, rules, keep)
    assert shapes(hand) == shapes(narrow_template), "hand-narrowed tree != narrow model's"
    assert shapes(pruned.variables) == shapes(hand)
    want = np.asarray(narrow_fn(hand, x))
    got = np.asarray(pruned.fn(pruned.variables, x))
    original = np.asarray(fn(variables, x))
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
    assert np.abs(original - want).max() > 1e-2 * scale, "pruning changed nothing"


def linen_fn(module):
    return lambda variables, x: module.apply(variables, x, train=False)


def linen_template(module):
    return jax.eval_shape(module.init, jax.random.key(0), fashion_mnist_batch()[:1])


def linen_model(module, seed=0):
    variables = module.init(jax.random.key(seed), fashion_mnist_batch()[:1])
    return linen_fn(module), perturbed(variables, seed)


BN = r"(params|batch_stats)/{}/(scale|bias|mean|var)"


def nnx_rules(stages):
    """Stage s: ``down{s}`` reads the previous stage's ``conv`` channels, ``conv{s}`` reads
    ``down{s}``; no residuals, so every conv's output is its own keep-set."""
    rules = []
    for s in range(stages):
        for kind, cin in (("down", f"conv{s - 1}" if s else None), ("conv", f"down{s}")):
            rules += [(rf"params/stage{s}_{kind}/conv/kernel", (None, None, cin, f"{kind}{s}")),
                      (BN.format(f"stage{s}_{kind}/bn"), (f"{kind}{s}",))]
    return rules + [(r"params/head/kernel", (f"conv{stages - 1}", None)),
                    (r"params/head/bias", (None,))]


def test_plain_conv_net_channels_nnx():
    widths, narrow = (8, 16), (5, 9)
    make = lambda w: nnx_cnn.make_nnx_function(lambda rngs: nnx_cnn.NnxCNN(w, rngs=rngs))
    fn, variables = make(widths)(jax.random.key(0))
    variables = perturbed(variables, 0)
    narrow_fn, template = make(narrow)(jax.random.key(1))
    counts = {f"{kind}{s}": (w, k) for s, (w, k) in enumerate(zip(widths, narrow))
              for kind in ("down", "conv")}
    keep = random_keep(np.random.default_rng(0), counts)
    owners = {name: (f"params/stage{name[-1]}_{name[:-1]}/conv/kernel", 3) for name in keep}
    check(fn, variables, narrow_fn, template, nnx_rules(len(widths)), keep, owners)


def resnet_rules(blocks_per_stage):
    """Stage s's residual stream is ``res{s}`` (the stem feeds stage 0's); each block's
    inner width ``in{s}_{i}``; a stage's first block reads the previous stream."""
    rules = [(r"params/stem/kernel", (None, None, None, "res0")),
             (BN.format("stem_bn"), ("res0",)),
             (r"params/head/kernel", (f"res{len(blocks_per_stage) - 1}", None)),
             (r"params/head/bias", (None,))]
    for s, n in enumerate(blocks_per_stage):
        for i in range(n):
            block, inner, out = f"stage{s}_block{i}", f"in{s}_{i}", f"res{s}"
            cin = f"res{s - 1}" if s and not i else out
            rules += [(rf"params/{block}/conv1/kernel", (None, None, cin, inner)),
                      (BN.format(f"{block}/bn1"), (inner,)),
                      (rf"params/{block}/conv2/kernel", (None, None, inner, out)),
                      (BN.format(f"{block}/bn2"), (out,)),
                      (rf"params/{block}/proj/kernel", (None, None, cin, out)),
                      (BN.format(f"{block}/proj_bn"), (out,))]
    return rules


def test_resnet_stage_and_block_widths():
    """Two blocks in a stage share one residual stream; the narrow ResNet has the same
    count for a stage's stream and its blocks' inner widths (one ``widths`` argument)."""
    blocks, widths, narrow = (2, 2, 1), (8, 16, 16), (3, 11, 6)
    module = resnet.ResNet(10, blocks, widths, "basic", widths[0])
    small = resnet.ResNet(10, blocks, narrow, "basic", narrow[0])
    fn, variables = linen_model(module)
    counts = {f"res{s}": (w, k) for s, (w, k) in enumerate(zip(widths, narrow))}
    counts.update({f"in{s}_{i}": (widths[s], narrow[s])
                   for s, n in enumerate(blocks) for i in range(n)})
    keep = random_keep(np.random.default_rng(1), counts)
    owners = {f"res{s}": (f"params/stage{s}_block0/conv2/kernel", 3) for s in range(3)}
    owners.update({f"in{s}_{i}": (f"params/stage{s}_block{i}/conv1/kernel", 3)
                   for s, n in enumerate(blocks) for i in range(n)})
    check(fn, variables, linen_fn(small), linen_template(small), resnet_rules(blocks),
          keep, owners)


MIXER_RULES = [
    (r"params/patch_embed/kernel", (None, None, None, "dim")),
    (r"params/patch_embed/bias", ("dim",)),
    (r"params/(block\d/norm\d|final_norm)/(scale|bias)", ("dim",)),
    # token mixing acts on the token axis: its kernels never touch the channels
    (r"params/block(?P<b>\d)/token_mixing/fc1/kernel", (None, "tok{b}")),
    (r"params/block(?P<b>\d)/token_mixing/fc1/bias", ("tok{b}",)),
    (r"params/block(?P<b>\d)/token_mixing/fc2/kernel", ("tok{b}", None)),
    (r"params/block(?P<b>\d)/token_mixing/fc2/bias", (None,)),
    (r"params/block(?P<b>\d)/channel_mixing/fc1/kernel", ("dim", "ch{b}")),
    (r"params/block(?P<b>\d)/channel_mixing/fc1/bias", ("ch{b}",)),
    (r"params/block(?P<b>\d)/channel_mixing/fc2/kernel", ("ch{b}", "dim")),
    (r"params/block(?P<b>\d)/channel_mixing/fc2/bias", ("dim",)),
    (r"params/head/kernel", ("dim", None)),
    (r"params/head/bias", (None,)),
]


def test_mlp_hidden_widths_mixer():
    """Dense MLP hidden widths (channel mixing, and token mixing on the token axis) and the
    residual width, where LayerNorm must normalize over the kept channels only."""
    module = mixer.MlpMixer(10, 4, 16, 2, 8, 32)
    small = mixer.MlpMixer(10, 4, 10, 2, 5, 13)
    fn, variables = linen_model(module)
    counts = {"dim": (16, 10), "tok0": (8, 5), "tok1": (8, 5), "ch0": (32, 13),
              "ch1": (32, 13)}
    keep = random_keep(np.random.default_rng(2), counts)
    owners = {"dim": ("params/patch_embed/kernel", 3)}
    owners.update({f"{kind}{b}": (f"params/block{b}/{part}/fc1/kernel", 1)
                   for b in range(2) for kind, part in (("tok", "token_mixing"),
                                                        ("ch", "channel_mixing"))})
    check(fn, variables, linen_fn(small), linen_template(small), MIXER_RULES, keep, owners)


VIT_COMMON = [
    (r"params/patch_embed/kernel", (None, None, None, "dim")),
    (r"params/patch_embed/bias", ("dim",)),
    (r"params/(cls_token|pos_embed)", (None, None, "dim")),
    (r"params/(block\d/norm\d|final_norm)/(scale|bias)", ("dim",)),
    (r"params/block\d/attn/out/bias", ("dim",)),
    (r"params/block(?P<b>\d)/mlp_fc1/kernel", ("dim", "mlp{b}")),
    (r"params/block(?P<b>\d)/mlp_fc1/bias", ("mlp{b}",)),
    (r"params/block(?P<b>\d)/mlp_fc2/kernel", ("mlp{b}", "dim")),
    (r"params/block\d/mlp_fc2/bias", ("dim",)),
    (r"params/head/kernel", ("dim", None)),
    (r"params/head/bias", (None,)),
]
# linen MultiHeadDotProductAttention: (dim, heads, head_dim) kernels, heads on their own axis
VIT_RULES = {"linen": VIT_COMMON + [
    (r"params/block(?P<b>\d)/attn/(query|key|value)/kernel", ("dim", "heads{b}", None)),
    (r"params/block(?P<b>\d)/attn/(query|key|value)/bias", ("heads{b}", None)),
    (r"params/block(?P<b>\d)/attn/out/kernel", ("heads{b}", None, "dim"))],
    # one fused Dense: columns are (q|k|v, head, head_dim) flattened, see qkv_columns
    "fused": VIT_COMMON + [
    (r"params/block(?P<b>\d)/attn/qkv/kernel", ("dim", "qkv{b}")),
    (r"params/block(?P<b>\d)/attn/qkv/bias", ("qkv{b}",)),
    (r"params/block(?P<b>\d)/attn/out/kernel", ("rows{b}", "dim"))]}
HEADS_OWNER = {"linen": ("params/block{}/attn/query/kernel", 1),
               "fused": ("params/block{}/attn/qkv/kernel", 1)}


def qkv_columns(heads, num_heads, head_dim):
    """Columns of the fused qkv kernel that the kept heads use, in q, k, v order."""
    return [(part * num_heads + h) * head_dim + d
            for part in range(3) for h in heads for d in range(head_dim)]


@pytest.mark.parametrize("attention", ["linen", "fused"])
def test_attention_heads_vit(attention):
    """Two of four heads per block with all of head_dim 6, so the narrow ViT has width
    12 = 2 heads x 6 (ViT derives head_dim from width / heads): the residual width, the
    heads and the MLP hidden width all shrink. Sizes 4 (heads) and 6 (head_dim) differ, so
    the heads group is found by its size."""
    module = vit.ViT(10, 4, 24, 2, 4, 32, attention)
    small = vit.ViT(10, 4, 12, 2, 2, 20, attention)
    fn, variables = linen_model(module)
    counts = {"dim": (24, 12), "heads0": (4, 2), "heads1": (4, 2), "mlp0": (32, 20),
              "mlp1": (32, 20)}
    keep = random_keep(np.random.default_rng(3), counts)
    for b in range(2):
        keep[f"qkv{b}"] = qkv_columns(keep[f"heads{b}"], 4, 6)
        keep[f"rows{b}"] = [h * 6 + d for h in keep[f"heads{b}"] for d in range(6)]
    path, axis = HEADS_OWNER[attention]
    owners = {"dim": ("params/patch_embed/kernel", 3)}
    owners.update({f"heads{b}": (path.format(b), axis, 4) for b in range(2)})
    owners.update({f"mlp{b}": (f"params/block{b}/mlp_fc1/kernel", 1) for b in range(2)})
    check(fn, variables, linen_fn(small), linen_template(small), VIT_RULES[attention],
          keep, owners)
