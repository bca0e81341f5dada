"""FLOPs / params / memory from the jaxpr: hand counts, XLA's own cost analysis, and the
differentiable cost against the exact cost of physically narrower models."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core.cost import count, count_analysis, CostModel
from core.channel_groups import analyze
from models import resnet, zoo


def _random(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype), shapes)


@functools.lru_cache(maxsize=None)
def linen_model(module, input_shape, batch=1, vocab=0):
    """``(fn, variables, x)`` for a linen module without compiling its init."""
    rng = np.random.default_rng(1)
    shape = (batch,) + tuple(input_shape)
    x = (jnp.asarray(rng.integers(0, vocab, shape), jnp.int32) if vocab
         else jnp.asarray(rng.normal(size=shape), jnp.float32))
    variables = _random(jax.eval_shape(module.init, jax.random.key(0), x))
    return (lambda v, inp: module.apply(v, inp, train=False)), variables, x


def zoo_model(name, tiny=True, batch=2):
    if name not in zoo.ZOO:
        pytest.skip(f"{name} is not in the zoo yet")
    entry = zoo.ZOO[name]
    module = entry.build_tiny() if tiny else entry.build()
    shape = (entry.tiny_input_shape or entry.input_shape) if tiny else entry.input_shape
    return linen_model(module, tuple(shape), batch, entry.input_vocab)


# ----------------------------------------------------------------- hand counts
def resnet_cifar_counts(widths=(16, 32, 64), blocks=3, hw=28, classes=10):
    """MACs and params of a CIFAR ResNet with basic blocks, counted by hand."""
    macs, params = hw * hw * 9 * widths[0], 9 * widths[0] + 2 * widths[0]
    size, c_in = hw, widths[0]
    for stage, w in enumerate(widths):
        for b in range(blocks):
            stride = 2 if stage > 0 and b == 0 else 1
            size = -(-size // stride)
            macs += size * size * 9 * (c_in * w + w * w)
            params += 9 * (c_in * w + w * w) + 4 * w
            if stride != 1 or c_in != w:
                macs += size * size * c_in * w
                params += c_in * w + 2 * w
            c_in = w
    return macs + c_in * classes, params + c_in * classes + classes


def test_resnet20_flops_and_params_match_hand_count():
    fn, variables, x = linen_model(resnet.resnet_cifar(20), (28, 28, 1))
    report = count(fn, variables, x)
    macs, params = resnet_cifar_counts()
    assert report.matmul_flops == 2 * macs == 62_043_904
    assert report.params == params == 272_186
    assert report.state == 2 * (16 * 7 + 32 * 7 + 64 * 7)      # BN mean and var
    assert report.flops == report.matmul_flops + report.other_flops > report.matmul_flops


def test_vit_flops_match_hand_count():
    tokens, dim, heads, head_dim, mlp, depth, classes = 10, 16, 2, 8, 32, 2, 10
    block = (3 * tokens * dim * heads * head_dim          # q, k, v projections
             + 2 * heads * tokens * tokens * head_dim      # scores and weighted values
             + tokens * heads * head_dim * dim             # output projection
             + 2 * tokens * dim * mlp)                     # MLP
    macs = 9 * (4 * 4) * dim + depth * block + dim * classes
    for name in ("vit", "vit_fused"):
        fn, variables, x = zoo_model(name, batch=2)
        assert count(fn, variables, x).matmul_flops == 2 * 2 * macs


def _single_op_xla_flops(eqn):
    args = [jnp.zeros(v.aval.shape, v.aval.dtype) for v in eqn.invars]
    fn = jax.jit(lambda *a: eqn.primitive.bind(*a, **eqn.params))
    return fn.lower(*args).compile().cost_analysis()["flops"]


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "regnet", "unet", "vit"])
def test_conv_and_dot_flops_agree_with_xla_op_by_op(name):
    """Plain, depthwise, grouped and transposed convs and attention einsums."""
    fn, variables, x = zoo_model(name)
    report = count(fn, variables, x, exclude_padding=True)
    checked = {}
    for e in report.matmuls():
        key = (e.primitive, str(e.eqn.params), tuple(v.aval.shape for v in e.eqn.invars))
        if key not in checked:
            checked[key] = (e.flops, _single_op_xla_flops(e.eqn))
    assert len(checked) >= 3
    for ours, xla in checked.values():
        assert ours == xla


def test_whole_model_flops_close_to_xla():
    fn, variables, x = zoo_model("resnet20", tiny=False, batch=1)
    report = count(fn, variables, x, exclude_padding=True)
    xla = jax.jit(fn).lower(variables, x).compile().cost_analysis()["flops"]
    # Convolutions agree exactly (see above); elementwise conventions differ a little
    # after XLA's simplifications, which are ~1% of a ResNet.
    assert abs(report.flops - xla) / xla < 0.02
    assert abs(report.matmul_flops - xla) / xla < 0.03


def test_peak_activation_memory_by_hand():
    report = count(lambda p, x: jax.nn.relu(x @ p["w"]) @ p["v"],
                   {"w": jnp.ones((3, 5)), "v": jnp.ones((5, 2))}, jnp.ones((2, 3)))
    # x (24 B) and h (40 B) after the first dot; x dies; relu's output (40 B) is made while
    # h is alive: 80 B; then h dies and the logits (16 B) join: 56 B.
    assert report.peak_activation_bytes == 80
    assert [e.live_bytes for e in report.equations if e.path == (2,)] == [56]
    assert report.flops == 2 * 2 * 3 * 5 + 2 * 5 + 2 * 2 * 5 * 2


def test_matmul_equations_name_their_input_and_output_groups():
    fn, variables, x = zoo_model("resnet20", tiny=False, batch=1)
    report = count(fn, variables, x)
    groups = report.analysis.groups
    by_param = {}
    for g in groups:
        for m in g.members:
            by_param[(m.path, m.axis)] = g.id
    invars = dict(report.analysis.traced.param_invars())
    kernel = invars["params/stage1_block1/conv1/kernel"]
    conv = next(e for e in report.matmuls() if e.eqn.invars[1] is kernel)
    assert conv.in_groups == (by_param[("params/stage1_block1/conv1/kernel", 2)],)
    assert conv.out_groups == (by_param[("params/stage1_block1/conv1/kernel", 3)],)
    assert groups[conv.in_groups[0]].prunable and groups[conv.out_groups[0]].prunable


# ------------------------------------------------------------- differentiable cost
@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "vit_fused", "transformer_lm",
                                  "densenet", "regnet"])
def test_differentiable_cost_equals_exact_at_full_size(name):
    fn, variables, x = zoo_model(name)
    analysis = analyze(fn, variables, x)
    exact = count_analysis(analysis)
    cost = CostModel(analysis)()
    np.testing.assert_allclose(float(cost.matmul_flops), exact.matmul_flops, rtol=1e-6)
    np.testing.assert_allclose(float(cost.flops), exact.flops, rtol=1e-6)
    np.testing.assert_allclose(float(cost.params), exact.params, rtol=1e-6)
    np.testing.assert_allclose(float(cost.peak_activation_bytes),
                               exact.peak_activation_bytes, rtol=1e-6)


def test_differentiable_cost_equals_narrower_resnet_and_has_useful_gradient():
    fn, variables, x = linen_model(resnet.resnet_cifar(20), (28, 28, 1))
    model = CostModel(analyze(fn, variables, x))
    narrow = {16: 8, 32: 12, 64: 20}           # every group of a stage has the stage width
    sizes = np.array([narrow[g.size] if g.prunable else g.size for g in model.groups],
                     np.float32)
    small = resnet.ResNet(10, (3, 3, 3), (8, 12, 20), "basic", 8)
    exact = count(*linen_model(small, (28, 28, 1)))
    cost = model(sizes)
    np.testing.assert_allclose(float(cost.flops), exact.flops, rtol=1e-6)
    np.testing.assert_allclose(float(cost.params), exact.params, rtol=1e-6)
    np.testing.assert_allclose(float(cost.peak_activation_bytes),
                               exact.peak_activation_bytes, rtol=1e-6)
    grad = jax.grad(lambda s: model(s).flops)(jnp.asarray(sizes) + 0.5)
    assert np.all(np.isfinite(grad))
    prunable = np.array([g.prunable for g in model.groups])
    assert np.all(np.asarray(grad)[prunable] > 0)
    grad_params = jax.grad(lambda s: model(s).params)(jnp.asarray(sizes))
    assert np.all(np.asarray(grad_params)[prunable] > 0)


# A plain-JAX model whose shapes all come from its parameters, so slicing the parameters
# along each group's index maps builds the physically narrower model.
HEADS, QK, VD, WIDTH = 2, 3, 4, 6


def _conv(x, w, groups=1):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=groups)


def hybrid(p, x):
    a = jax.nn.relu(_conv(x, p["stem"]) * p["stem_scale"] + p["stem_bias"])
    b = _conv(a, p["dw"], feature_groups := p["dw"].shape[3])
    a = a + jax.nn.relu(_conv(jax.nn.relu(b), p["pw"]))              # residual
    c = jnp.concatenate([a, _conv(a, p["branch"])], axis=-1)          # concat
    t = _conv(c, p["to_tokens"])
    n, h, w, e = t.shape
    t = t.reshape(n, h * w, e)
    q = (t @ p["wq"]).reshape(n, h * w, *p["q_bias"].shape) + p["q_bias"]
    k = (t @ p["wk"]).reshape(n, h * w, *p["q_bias"].shape)
    v = (t @ p["wv"]).reshape(n, h * w, *p["v_bias"].shape) + p["v_bias"]
    att = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k), -1)
    o = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(n, h * w, -1)
    t = t + o @ p["wo"]
    hidden = jax.nn.gelu(t @ p["fc1"])
    t = t + hidden @ p["fc2"]
    return jnp.mean(t, 1) @ p["head"]


def hybrid_params():
    shapes = {"stem": (3, 3, 2, 8), "stem_scale": (8,), "stem_bias": (8,),
              "dw": (3, 3, 1, 8), "pw": (1, 1, 8, 8), "branch": (1, 1, 8, 5),
              "to_tokens": (1, 1, 13, WIDTH), "wq": (WIDTH, HEADS * QK),
              "wk": (WIDTH, HEADS * QK), "wv": (WIDTH, HEADS * VD), "q_bias": (HEADS, QK),
              "v_bias": (HEADS, VD), "wo": (HEADS * VD, WIDTH), "fc1": (WIDTH, 10),
              "fc2": (10, WIDTH), "head": (WIDTH, 3)}
    rng = np.random.default_rng(7)
    return {k: jnp.asarray(rng.normal(size=s) * 0.3, jnp.float32) for k, s in shapes.items()}


def narrow(params, groups, kept):
    """Keeps channels ``kept[g]`` of every group: a position of a parameter axis survives
    when every group covering it keeps the channel it belongs to."""
    masks = {(k, a): np.ones(v.shape[a], bool) for k, v in params.items()
             for a in range(v.ndim)}
    for g in groups:
        removed = np.setdiff1d(np.arange(g.size), kept.get(g.id, np.arange(g.size)))
        for m in g.members:
            masks[(m.path, m.axis)][m.index_map[removed].ravel()] = False
    out = {}
    for k, v in params.items():
        arr = np.asarray(v)
        for a in range(arr.ndim):
            arr = np.compress(masks[(k, a)], arr, axis=a)
        out[k] = jnp.asarray(arr)
    return out


def test_differentiable_cost_equals_exact_cost_of_narrower_models_at_random_sizes():
    params, x = hybrid_params(), jnp.ones((2, 4, 4, 2))
    analysis = analyze(hybrid, params, x)
    prunable = analysis.prunable()
    assert {g.size for g in prunable} >= {HEADS, QK, VD, WIDTH, 8, 5, 10}
    model = CostModel(analysis)
    rng = np.random.default_rng(3)
    for trial in range(3):
        kept = {g.id: np.sort(rng.choice(g.size, rng.integers(1, g.size + 1), replace=False))
                for g in prunable}
        small = narrow(params, analysis.groups, kept)
        exact = count(hybrid, small, x)
        sizes = {gid: float(len(k)) for gid, k in kept.items()}
        cost = model(sizes)
        np.testing.assert_allclose(float(cost.flops), exact.flops, rtol=1e-6)
        np.testing.assert_allclose(float(cost.matmul_flops), exact.matmul_flops, rtol=1e-6)
        np.testing.assert_allclose(float(cost.params), exact.params, rtol=1e-6)
        np.testing.assert_allclose(float(cost.peak_activation_bytes),
                                   exact.peak_activation_bytes, rtol=1e-6)
    grad = jax.grad(lambda s: model(s).flops)(jnp.asarray(model.full_sizes))
    assert np.all(np.isfinite(grad))
    assert all(grad[g.id] > 0 for g in prunable)
