"""Hypothesis strategies for random architectures (``architectures()``).

An architecture is grown from its inputs (NHWC images, float sequences, token ids, or a
pytree of an image and tokens) by a random walk over *motifs*: a motif is a few nodes that
real networks are made of (conv / norm / activation, residual blocks, SE gates,
split-process-concatenate, inception branches, pooling, upsampling, attention with
separate, fused or linen projections, grouped-query and ``jax.nn.dot_product_attention``,
MLPs, an RNN and stacked layers under ``lax.scan``, ``lax.cond`` and ``while`` bodies),
then a head. Every choice is a Hypothesis draw, so failures shrink to small models.

While generating, the walk names each channel axis with a ``tests.fuzz.layouts`` layout:
a new width is a new symbol, a residual branch ends on its input's layout, a split refines
a symbol into a Cat, a grouped conv or GroupNorm into a Prod. That is the oracle the
library's channel groups and the narrow reference are built from.

``exclude`` drops features (tags such as ``"scan_mlp"`` or ``"input:dict"``) from the
walk: known issues stay out of the CI fuzz test while their regression tests document them.
"""
import dataclasses
import math
from typing import Callable, Dict, FrozenSet, List, Optional, Tuple

from hypothesis import strategies as st

from tests.fuzz import layouts as L
from tests.fuzz.build import Node, Param, Ref
from tests.fuzz.ops import ACTIVATIONS

FEATURES = (
    "conv:dense", "conv:depthwise", "conv:grouped", "conv:transposed", "conv:dilated",
    "conv:strided", "norm:batchnorm", "norm:layernorm", "norm:rmsnorm", "norm:groupnorm",
    "residual", "se", "split:split", "split:slice", "branches", "pool", "upsample", "gate",
    "attention:separate", "attention:fused", "attention:linen", "attention:dpa",
    "attention:gqa", "attention:causal", "mlp", "rnn", "scan_mlp", "cond", "loop",
    "tied_head", "embed", "input:image", "input:seq", "input:tokens", "input:dict",
    "input:tuple", "input:args", "input:positional_pair", "output:tuple", "output:dict",
    "output:features",
    "dtype:bfloat16", "backend:linen", "tokens_concat")


@dataclasses.dataclass
class V:
    """A value while generating: where it comes from, its kind and channel layout."""
    ref: Ref
    kind: str                    # image | seq | vec
    layout: L.Layout
    spatial: Tuple[int, ...]     # (H, W) for images, (length,) for sequences


class Gen:
    """State of one architecture being drawn."""

    def __init__(self, draw, exclude: FrozenSet[str], backend: str):
        self.draw = draw
        self.exclude = exclude
        self.backend = backend
        self.syms: List[L.Sym] = []
        self.nodes: List[Node] = []
        self.tags = set()

    # draws ---------------------------------------------------------------------------
    def integer(self, lo, hi) -> int:
        return self.draw(st.integers(lo, hi))

    def coin(self) -> bool:
        return self.draw(st.booleans())

    def pick(self, options):
        return self.draw(st.sampled_from(list(options)))

    def allowed(self, *features) -> bool:
        return not any(f in self.exclude for f in features)

    def choose(self, options: Dict[str, Tuple[str, ...]]):
        """A key of ``options`` whose features are all allowed."""
        keys = [k for k, feats in options.items() if self.allowed(*feats)]
        return self.pick(keys)

    def sym(self, lo=2, hi=6) -> L.Sym:
        s = L.Sym(len(self.syms), self.integer(lo, hi))
        self.syms.append(s)
        return s

    def sym_of(self, n: int) -> L.Sym:
        s = L.Sym(len(self.syms), n)
        self.syms.append(s)
        return s

    # nodes ---------------------------------------------------------------------------
    def node(self, op, ins, attrs=None, params=None, outs=(), tags=(), linen=False,
             shared=None) -> List[Ref]:
        n = Node(op, tuple(v.ref if isinstance(v, V) else v for v in ins), attrs or {},
                 params or {}, tuple(outs), linen and self.backend == "linen",
                 shared or {})
        n.index = len(self.nodes)
        self.nodes.append(n)
        self.tags.update(tags)
        return [(n.index, k) for k in range(len(outs))]

    def linen_ok(self) -> bool:
        return self.backend == "linen" and self.coin()


def kernel(*layouts, fan_in=None) -> Param:
    fan = fan_in if fan_in is not None else math.prod(L.size(t) for t in layouts[:-1])
    return Param(tuple(layouts), "kernel", fan)


def bias(layout) -> Param:
    return Param((layout,), "bias")


def leaf(layout) -> Optional[L.Sym]:
    r = L.resolve(layout)
    return r if isinstance(r, L.Sym) else None


# ------------------------------------------------------------------------- image motifs
def _conv_out_size(n, k, s, d, padding, transposed):
    eff = (k - 1) * d + 1
    if transposed:
        return n * s
    if padding == "SAME":
        return -(-n // s)
    lo, hi = (0, 0) if padding == "VALID" else padding[0]
    return (n + lo + hi - eff) // s + 1


def conv_layer(g: Gen, v: V, out: Optional[L.Layout] = None, keep_space=False) -> V:
    """One convolution: dense, depthwise (multiplier 1 or more) or grouped, optionally
    strided, dilated, transposed, with SAME / VALID / explicit padding."""
    modes = {"dense": ("conv:dense",), "depthwise": ("conv:depthwise",)}
    s = leaf(v.layout)
    groups = [G for G in (2, 3) if s is not None and s.size % G == 0 and s.size // G >= 2]
    if groups:
        modes["grouped"] = ("conv:grouped",)
    if (out is not None and L.resolve(out) is not L.resolve(v.layout)) or L.size(v.layout) < 2:
        modes.pop("depthwise")     # one feature group: a plain conv
    if out is not None:
        modes.pop("grouped", None)
    mode = g.choose(modes)
    h = min(v.spatial)
    k = g.pick([1, 2, 3] if h >= 3 else [1])
    transposed = (mode == "dense" and not keep_space and h <= 4 and k > 1
                  and g.allowed("conv:transposed") and g.coin())
    stride = 2 if transposed else (g.pick([1, 2]) if not keep_space and h >= 4
                                   and g.allowed("conv:strided") else 1)
    dilation = g.pick([1, 2]) if k > 1 and not transposed and h >= 5 and g.allowed(
        "conv:dilated") else 1
    paddings = ["SAME"] if keep_space or transposed else ["SAME", "VALID", ((1, 1), (1, 1))]
    padding = g.pick([p for p in paddings
                      if _conv_out_size(h, k, stride, dilation, p, transposed) >= min(h, 2)])
    tags = ["conv:" + mode] + (["conv:transposed"] if transposed else []) + (
        ["conv:strided"] if stride > 1 else []) + (["conv:dilated"] if dilation > 1 else [])
    c_in = v.layout
    if mode == "dense":
        k_in, group_layout = c_in, None
        k_out = out if out is not None else g.sym()
    elif mode == "depthwise":
        k_in, group_layout = L.Const(1), c_in
        k_out = out if out is not None else (
            c_in if g.coin() else L.Prod((c_in, g.sym(2, 3))))
    else:
        G = g.pick(groups)
        gs, per = g.sym_of(G), g.sym_of(s.size // G)
        s.refined = L.Prod((gs, per))
        k_in, group_layout = per, gs
        k_out = L.Prod((gs, g.sym(2, 3)))
    with_bias = g.coin()
    params = {"kernel": kernel(L.Const(k), L.Const(k), k_in, k_out)}
    if with_bias:
        params["bias"] = bias(k_out)
    attrs = {"kernel": (k, k), "stride": (stride, stride), "dilation": (dilation, dilation),
             "padding": padding, "groups": group_layout, "transposed": transposed,
             "bias": with_bias, "mode": mode}
    ref, = g.node("conv", [v], attrs, params, [k_out], tags, linen=g.linen_ok())
    space = tuple(_conv_out_size(n, k, stride, dilation, padding, transposed)
                  for n in v.spatial)
    return V(ref, "image", k_out, space)


NORMS = {"batchnorm": ("norm:batchnorm",), "layernorm": ("norm:layernorm",),
         "rmsnorm": ("norm:rmsnorm",), "groupnorm": ("norm:groupnorm",)}


def norm(g: Gen, v: V) -> V:
    options = dict(NORMS)
    s = leaf(v.layout)
    divisors = [G for G in (2, 3) if s is not None and s.size % G == 0 and s.size // G >= 2]
    if v.kind != "image" or not divisors:
        options.pop("groupnorm")
    if v.kind != "image":
        options.pop("batchnorm")
    kind = g.choose(options)
    t = v.layout
    params = {"scale": Param((t,), "scale"), "bias": bias(t)}
    attrs = {}
    if kind == "rmsnorm":
        params.pop("bias")
    if kind == "batchnorm":
        params["mean"] = Param((t,), "bias", collection="batch_stats")
        params["var"] = Param((t,), "var", collection="batch_stats")
    if kind == "groupnorm":
        G = g.pick(divisors)
        gs, per = g.sym_of(G), g.sym_of(s.size // G)
        s.refined = L.Prod((gs, per))
        attrs = {"g": gs, "c": per}
    ref, = g.node(kind, [v], attrs, params, [t], NORMS[kind], linen=g.linen_ok())
    return dataclasses.replace(v, ref=ref)


def activation(g: Gen, v: V) -> V:
    ref, = g.node("act", [v], {"fn": g.pick(sorted(ACTIVATIONS))}, outs=[v.layout])
    return dataclasses.replace(v, ref=ref)


def conv_block(g: Gen, v: V, out=None, keep_space=False) -> V:
    v = conv_layer(g, v, out, keep_space)
    if g.coin():
        v = norm(g, v)
    return activation(g, v) if g.coin() else v


def residual(g: Gen, v: V) -> V:
    branch = conv_block(g, v, keep_space=True) if v.kind == "image" else dense_block(g, v)
    if v.kind == "image":
        branch = conv_layer(g, branch, out=v.layout, keep_space=True)
    else:
        branch = dense(g, branch, out=v.layout)
    ref, = g.node("add", [v, branch], outs=[v.layout], tags=["residual"])
    return dataclasses.replace(v, ref=ref)


def se_gate(g: Gen, v: V) -> V:
    t, r = v.layout, g.sym(1, 3)
    params = {"w1": kernel(t, r), "b1": bias(r), "w2": kernel(r, t), "b2": bias(t)}
    ref, = g.node("se", [v], {}, params, [t], ["se"])
    return dataclasses.replace(v, ref=ref)


def split_process(g: Gen, v: V) -> V:
    """Split the channels (``jnp.split`` or slices), process some pieces, concatenate the
    ones used (an unused piece only feeds the layer that made it)."""
    s = leaf(v.layout)
    n_parts = g.integer(2, min(3, s.size))
    cuts = sorted(g.draw(st.lists(st.integers(1, s.size - 1), min_size=n_parts - 1,
                                  max_size=n_parts - 1, unique=True)))
    sizes = [b - a for a, b in zip([0] + cuts, cuts + [s.size])]
    parts = [g.sym_of(n) for n in sizes]
    s.refined = L.Cat(tuple(parts))
    how = g.choose({"split": ("split:split",), "slice": ("split:slice",)})
    refs = g.node("split", [v], {"parts": tuple(parts), "how": how}, outs=parts,
                  tags=["split:" + how])
    used = [V(r, v.kind, p, v.spatial) for r, p in zip(refs, parts)]
    if len(used) > 2 and g.coin():
        used.pop(g.integer(0, len(used) - 1))
    processed = []
    for piece in used:
        choice = g.pick(["keep", "act", "layer"])
        if choice == "act":
            piece = activation(g, piece)
        elif choice == "layer":
            piece = (conv_block(g, piece, keep_space=True) if v.kind == "image"
                     else dense_block(g, piece))
        processed.append(piece)
    return concat(g, processed)


def concat(g: Gen, values: List[V]) -> V:
    if len(values) == 1:
        return values[0]
    t = L.Cat(tuple(p.layout for p in values))
    ref, = g.node("concat", values, {}, outs=[t])
    return V(ref, values[0].kind, t, values[0].spatial)


def branches(g: Gen, v: V) -> V:
    """Inception-style: parallel layers on one input, concatenated."""
    maker = (lambda: conv_block(g, v, keep_space=True)) if v.kind == "image" else (
        lambda: dense_block(g, v))
    outs = [maker() for _ in range(g.integer(2, 3))]
    if g.coin():
        outs.append(v)
    g.tags.add("branches")
    return concat(g, outs)


def pool(g: Gen, v: V) -> V:
    window = g.pick([2, 3]) if min(v.spatial) >= 3 else 2
    stride = g.pick([1, 2])
    padding = g.pick(["VALID", "SAME"])
    space = tuple(_conv_out_size(n, window, stride, 1, padding, False) for n in v.spatial)
    if min(space) < 1:
        return v
    attrs = {"kind": g.pick(["max", "avg"]), "window": (window, window),
             "stride": (stride, stride), "padding": padding}
    ref, = g.node("pool", [v], attrs, outs=[v.layout], tags=["pool"])
    return V(ref, "image", v.layout, space)


def upsample(g: Gen, v: V) -> V:
    method = g.pick(["repeat", "nearest", "bilinear"])
    ref, = g.node("upsample", [v], {"method": method}, outs=[v.layout], tags=["upsample"])
    return V(ref, "image", v.layout, tuple(2 * n for n in v.spatial))


def gate(g: Gen, v: V) -> V:
    a = conv_layer(g, v, keep_space=True) if v.kind == "image" else dense(g, v)
    b = (conv_layer(g, v, out=a.layout, keep_space=True) if v.kind == "image"
         else dense(g, v, out=a.layout))
    ref, = g.node("gate", [a, b], outs=[a.layout], tags=["gate"])
    return dataclasses.replace(a, ref=ref)


# ---------------------------------------------------------------- sequence / vector motifs
def dense(g: Gen, v: V, out=None) -> V:
    t = out if out is not None else g.sym()
    params = {"kernel": kernel(v.layout, t)}
    if g.coin():
        params["bias"] = bias(t)
    ref, = g.node("dense", [v], {}, params, [t], linen=g.linen_ok())
    return dataclasses.replace(v, ref=ref, layout=t)


def dense_block(g: Gen, v: V, out=None) -> V:
    v = dense(g, v, out)
    return activation(g, v) if g.coin() else v


def mlp(g: Gen, v: V) -> V:
    h = norm(g, v) if g.coin() else v
    h = activation(g, dense(g, h))
    h = dense(g, h, out=v.layout)
    ref, = g.node("add", [v, h], outs=[v.layout], tags=["mlp", "residual"])
    return dataclasses.replace(v, ref=ref)


def attention(g: Gen, v: V) -> V:
    """Pre-norm residual attention; its projections are one of four renderings."""
    options = {"separate": ("attention:separate",), "fused": ("attention:fused",),
               "dpa": ("attention:dpa",)}
    if g.backend == "linen":
        options["linen"] = ("attention:linen",)
    projection = g.choose(options)
    gqa = projection != "linen" and g.allowed("attention:gqa") and g.coin()
    kv = g.sym(2, 3)
    heads = L.Prod((kv, g.sym(2, 2))) if gqa else kv
    dk = g.sym(2, 4)
    # dot_product_attention and linen's attention want one head_dim for q, k and v, but
    # nothing ties v's to q's and k's: separate symbols of the same size.
    dv = g.sym_of(dk.size) if projection in ("dpa", "linen") else g.sym(2, 4)
    causal = projection != "linen" and g.allowed("attention:causal") and g.coin()
    e, out = v.layout, v.layout
    attrs = {"heads": heads, "kv": kv, "dk": dk, "dv": dv, "out": out, "causal": causal,
             "scale": 1.0 / math.sqrt(dk.size),
             "variant": "dpa" if projection == "dpa" else "plain",
             "projection": "separate" if projection == "dpa" else projection}
    if projection == "linen":
        dims = {"query": dk, "key": dk, "value": dv}
        params = {f"{n}/kernel": kernel(e, kv, d) for n, d in dims.items()}
        params.update({f"{n}/bias": Param((kv, d), "bias") for n, d in dims.items()})
        params["out/kernel"] = kernel(kv, dv, out)
    elif attrs["projection"] == "fused":
        qkv = L.Cat((L.Prod((heads, dk)), L.Prod((kv, dk)), L.Prod((kv, dv))))
        params = {"wqkv": kernel(e, qkv)}
    else:
        params = {"wq": kernel(e, L.Prod((heads, dk))), "wk": kernel(e, L.Prod((kv, dk))),
                  "wv": kernel(e, L.Prod((kv, dv)))}
    if projection != "linen":
        if g.coin():
            params["bq"] = bias(L.Prod((heads, dk)))
        params["wo"] = kernel(L.Prod((heads, dv)), out)
        params["bo"] = bias(out)
    else:
        params["out/bias"] = bias(out)
    tags = ["attention:" + projection] + (["attention:gqa"] if gqa else []) + (
        ["attention:causal"] if causal else [])
    h = norm(g, v) if g.coin() else v
    ref, = g.node("attention", [h], attrs, params, [out], tags, linen=projection == "linen")
    ref, = g.node("add", [v, V(ref, v.kind, out, v.spatial)], outs=[v.layout],
                  tags=["residual"])
    return dataclasses.replace(v, ref=ref)


def rnn(g: Gen, v: V) -> V:
    h = g.sym()
    params = {"wx": kernel(v.layout, h), "wh": kernel(h, h), "b": bias(h)}
    ref, = g.node("rnn", [v], {}, params, [h], ["rnn"])
    return dataclasses.replace(v, ref=ref, layout=h)


def scan_mlp(g: Gen, v: V) -> V:
    n, f, t = L.Const(g.integer(1, 3)), g.sym(), v.layout
    params = {"w1": kernel(n, t, f, fan_in=L.size(t)), "b1": Param((n, f), "bias"),
              "w2": kernel(n, f, t, fan_in=L.size(f)), "b2": Param((n, t), "bias")}
    ref, = g.node("scan_mlp", [v], {"fn": g.pick(["relu", "gelu", "tanh"])}, params, [t],
                  ["scan_mlp"])
    return dataclasses.replace(v, ref=ref)


def cond(g: Gen, v: V) -> V:
    t = g.sym()
    params = {"wa": kernel(v.layout, t), "ba": bias(t), "wb": kernel(v.layout, t),
              "bb": bias(t)}
    ref, = g.node("cond", [v], {"threshold": g.pick([-100.0, 100.0])}, params, [t],
                  ["cond"])
    return dataclasses.replace(v, ref=ref, layout=t)


def loop(g: Gen, v: V) -> V:
    t = v.layout
    params = {"w": kernel(t, t), "b": bias(t)}
    ref, = g.node("loop", [v], {"n": g.integer(1, 3)}, params, [t], ["loop"])
    return dataclasses.replace(v, ref=ref)


# ------------------------------------------------------------------------------- walk
Motif = Callable[[Gen, V], V]

MOTIFS: Dict[str, Dict[str, Tuple[Motif, Tuple[str, ...]]]] = {
    "image": {
        "conv_block": (conv_block, ()), "residual": (residual, ("residual",)),
        "se": (se_gate, ("se",)), "split": (split_process, ()),
        "branches": (branches, ("branches",)), "pool": (pool, ("pool",)),
        "upsample": (upsample, ("upsample",)), "gate": (gate, ("gate",)),
        "norm": (norm, ()), "cond": (cond, ("cond",)),
    },
    "seq": {
        "dense": (dense_block, ()), "mlp": (mlp, ("mlp",)),
        "attention": (attention, ()), "rnn": (rnn, ("rnn",)),
        "scan_mlp": (scan_mlp, ("scan_mlp",)), "cond": (cond, ("cond",)),
        "loop": (loop, ("loop",)), "norm": (norm, ()), "split": (split_process, ()),
        "gate": (gate, ("gate",)),
    },
    "vec": {
        "dense": (dense_block, ()), "mlp": (mlp, ("mlp",)), "norm": (norm, ()),
        "split": (split_process, ()), "branches": (branches, ("branches",)),
        "cond": (cond, ("cond",)), "loop": (loop, ("loop",)),
    },
}


# Motifs that keep a sequence's width: a language model's blocks, before a tied head.
RESIDUAL_STREAM = ("mlp", "attention", "loop", "scan_mlp", "norm")


def motif(g: Gen, v: V, only: Optional[Tuple[str, ...]] = None) -> V:
    options = {k: feats for k, (_, feats) in MOTIFS[v.kind].items()
               if only is None or k in only}
    s = leaf(v.layout)
    if s is None or s.size < 2:
        options.pop("split", None)
    if v.kind == "image" and max(v.spatial) > 8:
        options.pop("upsample", None)
    return MOTIFS[v.kind][g.choose(options)][0](g, v)
