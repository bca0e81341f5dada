"""``architectures()``: the Hypothesis strategy for whole random models.

Inputs (an NHWC image, a float sequence, token ids, or an image and tokens passed as a
dict, a tuple or two arguments), a stem per input, a random walk of motifs
(``tests.fuzz.strategies``) with transitions image -> tokens -> vector, a head (classifier,
dense prediction, per-token or tied-embedding logits) and sometimes a second output (an
auxiliary head, or raw features, which pins their channels), as one array, a tuple or a dict.
float32 or bfloat16; plain jax.numpy or a Flax linen module.
"""
from typing import FrozenSet, List, Optional, Tuple

from hypothesis import strategies as st

from tests.fuzz import layouts as L
from tests.fuzz import strategies as S
from tests.fuzz.build import Arch, Input


def _stem(g: S.Gen, inp: Input, k: int) -> S.V:
    ref = (-1, k)
    if inp.kind == "image":
        v = S.V(ref, "image", inp.layout, inp.shape[:2])
        return S.conv_block(g, v)
    if inp.kind == "seq":
        return S.dense_block(g, S.V(ref, "seq", inp.layout, inp.shape[:1]))
    e = g.sym()
    table = S.Param((L.Const(inp.vocab), e), "table")
    out, = g.node("embed", [ref], {}, {"table": table}, [e], ["embed"])
    return S.V(out, "seq", e, inp.shape[:1])


def _walk(g: S.Gen, v: S.V, steps: int, end_kind: str) -> S.V:
    order = ["image", "seq", "vec"]
    for _ in range(steps):
        v = S.motif(g, v)
        if order.index(v.kind) < order.index(end_kind) and g.coin():
            v = _transition(g, v, end_kind)
    while v.kind != end_kind:
        v = _transition(g, v, end_kind)
    return v


def _transition(g: S.Gen, v: S.V, end_kind: str) -> S.V:
    if v.kind == "image" and end_kind in ("seq", "vec") and (end_kind == "seq" or g.coin()):
        ref, = g.node("tokens", [v], {}, outs=[v.layout])
        return S.V(ref, "seq", v.layout, (v.spatial[0] * v.spatial[1],))
    ref, = g.node("global_pool", [v], {"kind": g.pick(["mean", "max"])}, outs=[v.layout])
    return S.V(ref, "vec", v.layout, ())


def _head(g: S.Gen, v: S.V, classes: int, embed_node=None):
    out = L.Const(classes)
    if v.kind == "image":
        return S.conv_layer(g, v, out=out, keep_space=True)
    if (embed_node is not None and v.kind == "seq" and g.allowed("tied_head")
            and g.backend == "jnp"
            and L.resolve(v.layout) is L.resolve(embed_node.params["table"].layouts[1])):
        vocab = embed_node.params["table"].layouts[0]
        ref, = g.node("tied_head", [v], {}, outs=[vocab], tags=["tied_head"],
                      shared={"table": f"params/{embed_node.name}/table"})
        return S.V(ref, v.kind, vocab, v.spatial)
    return S.dense(g, v, out=out)


INPUT_KINDS = {"image": ("input:image",), "seq": ("input:seq",),
               "tokens": ("input:tokens",), "pair": ("input:image", "input:tokens")}


def _inputs(g: S.Gen, kinds) -> List[Input]:
    kind = g.choose({k: INPUT_KINDS[k] for k in kinds})
    image = lambda: Input("image", (g.pick([4, 5, 6, 8]),) * 2 + (g.integer(1, 3),),
                          None)
    tokens = lambda: Input("tokens", (g.integer(2, 5),), L.Const(1), g.integer(5, 11))
    if kind == "image":
        found = [image()]
    elif kind == "seq":
        found = [Input("seq", (g.integer(2, 5), g.integer(1, 4)), None)]
    elif kind == "tokens":
        found = [tokens()]
    else:
        found = [image(), tokens()]
    for inp in found:
        if inp.layout is None:
            inp.layout = L.Const(inp.shape[-1])
    return found


def _pair(g: S.Gen, inputs: List[Input], steps: int) -> S.V:
    """An image and token ids: pooled and concatenated, or the image's patches
    concatenated to the embedded tokens along the sequence."""
    img = _stem(g, inputs[0], 0)
    tok = _stem(g, inputs[1], 1)
    if g.allowed("tokens_concat") and g.coin():
        img = S.conv_layer(g, img, out=tok.layout, keep_space=True)
        ref, = g.node("tokens", [img], {}, outs=[tok.layout])
        img = S.V(ref, "seq", tok.layout, (img.spatial[0] * img.spatial[1],))
        ref, = g.node("concat", [img, tok], {"axis": 1}, outs=[tok.layout],
                      tags=["tokens_concat"])
        seq = S.V(ref, "seq", tok.layout, (img.spatial[0] + tok.spatial[0],))
        return _walk(g, seq, steps, g.pick(["seq", "vec"]))
    a = _walk(g, img, steps // 2, "vec")
    b = _walk(g, tok, steps - steps // 2, "vec")
    return S.concat(g, [a, b])


@st.composite
def architectures(draw, exclude: FrozenSet[str] = frozenset(), max_steps: int = 4,
                  inputs: Tuple[str, ...] = tuple(INPUT_KINDS),
                  backend: Optional[str] = None):
    """A random architecture (``tests.fuzz.build.Arch``) without the ``exclude``d features;
    ``inputs``: the input kinds to choose from; ``backend``: 'jnp' or 'linen' (default:
    linen one time in five)."""
    if backend is None:
        backend = "linen" if ("backend:linen" not in exclude and draw(
            st.integers(0, 4)) == 0) else "jnp"
    g = S.Gen(draw, exclude, backend)
    dtype = "bfloat16" if g.allowed("dtype:bfloat16") and draw(
        st.integers(0, 5)) == 0 else "float32"
    inputs = _inputs(g, inputs)
    steps = g.integer(1, max_steps)
    embed_node = None
    if len(inputs) == 2:
        v = _pair(g, inputs, steps)
    elif inputs[0].kind == "tokens" and g.allowed("tied_head") and g.coin():
        v = _stem(g, inputs[0], 0)             # a language model: blocks, tied logits
        for _ in range(steps):
            v = S.motif(g, v, only=S.RESIDUAL_STREAM)
    else:
        v = _stem(g, inputs[0], 0)
        end = g.pick(["image", "seq", "vec"] if v.kind == "image" else ["seq", "vec"])
        v = _walk(g, v, steps, end)
    if inputs[-1].kind == "tokens":
        embed_node = next(n for n in g.nodes if n.op == "embed")
    outputs = {"logits": _head(g, v, g.integer(2, 4), embed_node).ref}
    extra = g.choose({"none": (), "aux": (), "features": ("output:features",)})
    if extra == "aux":
        outputs["aux"] = _head(g, v, 2).ref
    elif extra == "features":
        outputs["features"] = v.ref
    styles = {"tuple": ("output:tuple",), "dict": ("output:dict",)}
    style = "single" if len(outputs) == 1 else g.choose(styles)
    input_styles = {"args": ("input:args",), "dict": ("input:dict",),
                    "tuple": ("input:tuple",)}
    input_style = g.choose(input_styles) if len(inputs) > 1 or g.coin() else "args"
    tags = set(g.tags) | {f"input:{i.kind}" for i in inputs} | {f"input:{input_style}"}
    if input_style == "args" and len(inputs) > 1:
        tags.add("input:positional_pair")
    if style != "single":
        tags.add(f"output:{style}")
    if extra == "features":
        tags.add("output:features")
    if dtype == "bfloat16":
        tags.add("dtype:bfloat16")
    if backend == "linen":
        tags.add("backend:linen")
    seed = draw(st.integers(0, 2 ** 31 - 1))
    return Arch(inputs, input_style, g.nodes, outputs, style, dtype, backend, g.syms,
                seed=seed, tags=tuple(sorted(tags)))
