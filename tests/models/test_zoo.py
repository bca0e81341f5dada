"""Every zoo model instantiates, runs, jits, traces and differentiates; family traits hold.

The compression tools loop over the zoo, so a broken entry would surface there as a
confusing analysis failure; these checks catch it first and say which model it is.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import zoo
from models.run_once import NO_BACKEND_OPTIMISATION

# Output shapes worked out by hand from each configuration (batch 2 tiny, batch 1 full).
TINY_OUTPUT = {
    "resnet20": (2, 10), "resnet_bottleneck": (2, 10), "mobilenetv2": (2, 10),
    "mobilenetv3": (2, 10), "efficientnet": (2, 10), "convnext": (2, 10), "regnet": (2, 10),
    "densenet": (2, 10), "inception": (2, 10),
    "unet": (2, 16, 16, 3),                      # per-pixel logits, 3 classes
    "vit": (2, 10), "vit_fused": (2, 10), "mixer": (2, 10),
    "transformer_lm": (2, 8, 256),               # logits over the byte vocabulary
    "fpn": (2, 8 * 8 + 4 * 4 + 2 * 2, 5 + 3),    # three levels, box+objectness+3 classes
    "nnx_cnn": (2, 10),
}
FULL_OUTPUT = {name: (1,) + shape[1:] for name, shape in TINY_OUTPUT.items()}
FULL_OUTPUT.update({
    "unet": (1, 28, 28, 11),
    "transformer_lm": (1, 128, 256),
    "fpn": (1, 14 * 14 + 7 * 7 + 4 * 4, 5 + 10),
})


@functools.lru_cache(maxsize=None)
def tiny(name):
    return zoo.instantiate(name, tiny=True, batch=2)


def compile_for_test(f, *args):
    """Jitted f for these example arguments; compiling is the cost here, so XLA's backend
    optimisations are off (it still compiles the whole graph)."""
    return jax.jit(f).lower(*args).compile(NO_BACKEND_OPTIMISATION)


def test_every_entry_has_an_expected_output():
    assert set(TINY_OUTPUT) == set(zoo.ZOO)


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_tiny_model_runs_jits_traces_and_differentiates(name):
    fn, variables, x = tiny(name)
    closed = jax.make_jaxpr(fn)(variables, x)
    (out_aval,) = closed.out_avals
    assert out_aval.shape == TINY_OUTPUT[name]
    assert out_aval.dtype == jnp.float32
    # The jaxpr's invars line up with the flattened (variables, x): the tools rely on it.
    assert len(closed.jaxpr.invars) == len(jax.tree_util.tree_leaves((variables, x)))

    def loss(variables):
        y = fn(variables, x)
        return jnp.mean(jnp.square(y)), y

    # One compilation covers jit, the forward pass and the gradient.
    (value, y), grads = compile_for_test(jax.value_and_grad(loss, has_aux=True),
                                         variables)(variables)
    assert y.shape == TINY_OUTPUT[name]
    assert bool(jnp.all(jnp.isfinite(y))) and float(jnp.std(y)) > 0
    assert np.isfinite(float(value))
    assert "params" in grads
    # Every parameter AND every BatchNorm statistic reaches the output: inference reads the
    # variables it is given (not, e.g., a copy captured when the model was built).
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        label = jax.tree_util.keystr(path)
        assert bool(jnp.all(jnp.isfinite(g))), f"{name}: non-finite gradient at {label}"
        assert float(jnp.max(jnp.abs(g))) > 0, f"{name}: {label} does not affect the output"


def test_instantiate_is_deterministic_and_seeded():
    _, v0, x0 = zoo.instantiate("nnx_cnn", seed=0)
    _, v1, x1 = zoo.instantiate("nnx_cnn", seed=0)
    _, v2, _ = zoo.instantiate("nnx_cnn", seed=1)
    leaves = lambda v: jax.tree_util.tree_leaves(v)
    assert all(bool(jnp.array_equal(a, b)) for a, b in zip(leaves(v0), leaves(v1)))
    assert bool(jnp.array_equal(x0, x1))
    assert not all(bool(jnp.array_equal(a, b)) for a, b in zip(leaves(v0), leaves(v2)))
    # BatchNorm statistics are randomised for NNX as for linen: variances positive, not 1.
    variances = [l for p, l in jax.tree_util.tree_leaves_with_path(v0["batch_stats"])
                 if jax.tree_util.keystr(p).endswith("['var']")]
    assert variances and all(bool(jnp.all(v > 0)) and not bool(jnp.all(v == 1))
                             for v in variances)


def test_lm_is_causal_with_tied_embedding_and_grouped_query_attention():
    fn, variables, tokens = tiny("transformer_lm")
    params = variables["params"]
    vocab, dim = params["embed"]["embedding"].shape
    # Tied: the embedding table is the only parameter with a vocabulary axis.
    vocab_leaves = [p for p, l in jax.tree_util.tree_leaves_with_path(params) if vocab in l.shape]
    assert len(vocab_leaves) == 1
    attn = params["block0"]["attn"]
    assert attn["key"]["kernel"].shape[1] * 2 == attn["query"]["kernel"].shape[1]
    # Causal: changing the last token changes only the last position's logits.
    changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % vocab)
    run = compile_for_test(fn, variables, tokens)
    y0, y1 = run(variables, tokens), run(variables, changed)
    np.testing.assert_allclose(y1[:, :-1], y0[:, :-1], atol=1e-5)
    assert float(jnp.max(jnp.abs(y1[:, -1] - y0[:, -1]))) > 1e-4


def test_attention_styles_have_the_advertised_kernels():
    dim, heads = 16, 2
    linen = tiny("vit")[1]["params"]["block0"]["attn"]
    assert linen["query"]["kernel"].shape == (dim, heads, dim // heads)
    assert linen["out"]["kernel"].shape == (heads, dim // heads, dim)
    fused = tiny("vit_fused")[1]["params"]["block0"]["attn"]
    assert fused["qkv"]["kernel"].shape == (dim, 3 * dim)
    assert fused["out"]["kernel"].shape == (dim, dim)


def test_the_two_vits_compute_the_same_function_given_the_same_weights():
    """The hand-written attention is real multi-head attention: fed linen's weights it agrees."""
    fn_linen, v_linen, x = tiny("vit")
    fn_fused, v_fused, _ = tiny("vit_fused")
    params = jax.tree.map(lambda a: a, v_fused["params"])
    for block, p in v_linen["params"].items():
        if not block.startswith("block"):
            params[block] = p
            continue
        params[block] = {k: w for k, w in p.items() if k != "attn"}
        a = p["attn"]
        names = ("query", "key", "value")
        qkv = [a[n]["kernel"].reshape(a[n]["kernel"].shape[0], -1) for n in names]
        bias = [a[n]["bias"].reshape(-1) for n in names]
        params[block]["attn"] = {
            "qkv": {"kernel": jnp.concatenate(qkv, 1), "bias": jnp.concatenate(bias)},
            "out": {"kernel": a["out"]["kernel"].reshape(-1, a["out"]["kernel"].shape[-1]),
                    "bias": a["out"]["bias"]}}
    # qkv columns are laid out (3, heads, head_dim), matching the fused reshape.
    fused_variables = {"params": params}
    fused = compile_for_test(fn_fused, fused_variables, x)(fused_variables, x)
    reference = compile_for_test(fn_linen, v_linen, x)(v_linen, x)
    np.testing.assert_allclose(fused, reference, atol=1e-5, rtol=1e-5)


def test_grouped_convs_are_neither_dense_nor_depthwise():
    params = tiny("regnet")[1]["params"]
    for block in ("stage0_block0", "stage1_block0"):
        kh, kw, per_group, out = params[block]["conv2"]["kernel"].shape
        assert 1 < out // per_group < out


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_full_config_output_shape(name):
    fn, variables, x = zoo.instantiate(name, tiny=False, batch=1)
    entry = zoo.ZOO[name]
    assert x.shape == (1,) + entry.input_shape
    y = compile_for_test(fn, variables, x)(variables, x)
    assert y.shape == FULL_OUTPUT[name]
    assert bool(jnp.all(jnp.isfinite(y)))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n, e in zoo.ZOO.items()
                                        if hasattr(e.build_tiny(), "init")))
def test_linen_train_mode_updates_batch_statistics(name):
    """Training code calls ``apply(..., train=True, mutable=["batch_stats"])``."""
    fn, variables, x = tiny(name)
    module = zoo.ZOO[name].build_tiny()
    train_step = lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"])
    y, updates = compile_for_test(train_step, variables, x)(variables, x)
    assert y.shape == TINY_OUTPUT[name]
    assert bool(jnp.all(jnp.isfinite(y)))
    if "batch_stats" in variables:
        changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                               updates["batch_stats"])
        assert all(jax.tree_util.tree_leaves(changed))


def test_nnx_constructor_can_be_traced():
    """Tools may build a model under ``jax.eval_shape`` to read shapes without compiling."""
    make = zoo.ZOO["nnx_cnn"].build_tiny()
    shapes = jax.eval_shape(lambda key: make(key)[1], jax.random.key(0))
    fn, variables = make(jax.random.key(0))
    assert jax.tree.map(lambda a: (a.shape, a.dtype), variables) == jax.tree.map(
        lambda s: (s.shape, s.dtype), shapes)
