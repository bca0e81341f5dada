"""The NPU linter flags GELU models and mismatched channel ranges, and is quiet on a clean
ReLU CNN."""
from quant.lint import lint
from tests.quant import tiny_models


def test_quiet_on_clean_relu_cnn():
    v = tiny_models.cnn_variables()
    report = lint(tiny_models.cnn, v, tiny_models.images(), profile="npu_int8_per_tensor")
    assert report.ok, str(report)


def test_flags_mismatched_channel_ranges():
    v = tiny_models.cnn_variables(spread=300.0)
    report = lint(tiny_models.cnn, v, tiny_models.images(), profile="npu_int8_per_tensor")
    spread = report.of_kind("weight_range_spread")
    assert len(spread) == 1 and spread[0].value > 100
    assert "tiny_models.py" in spread[0].source and "equaliz" in spread[0].fix
    assert report.of_kind("activation_channel_spread")
    assert not report.of_kind("unsupported_op")
    # per-channel weights make the weight spread harmless: not reported
    per_channel = lint(tiny_models.cnn, v, tiny_models.images(), profile="npu_w4a8")
    assert not per_channel.of_kind("weight_range_spread")


def test_flags_exact_gelu_with_its_source_line():
    import jax
    import jax.numpy as jnp

    def mlp(v, x):
        h = jax.nn.gelu(x.reshape(x.shape[0], -1) @ v["w1"], approximate=False)
        return h @ v["w2"]
    v = {"w1": jnp.ones((100, 16)) * 0.1, "w2": jnp.ones((16, 10)) * 0.1}
    report = lint(mlp, v, tiny_models.images(4), profile="npu_int8_per_tensor")
    (erf,) = [f for f in report.of_kind("unsupported_op") if "`erf" in f.message]  # erf(c)
    assert erf.source.startswith("tests/quant/test_lint.py:") and "GELU" in erf.fix
    assert erf.severity == "error"


def test_flags_gelu_and_layernorm_in_a_vit():
    from models import zoo
    fn, v, x = zoo.instantiate("vit", tiny=True, batch=4)
    report = lint(fn, v, x, profile="npu_int8_per_tensor")
    unsupported = report.of_kind("unsupported_op")
    primitives = {f.message.split("`")[1] for f in unsupported}
    assert {"tanh", "rsqrt", "exp"} <= primitives        # GELU, LayerNorm, softmax
    gelu = [f for f in unsupported if "`tanh`" in f.message][0]
    assert gelu.source.startswith("models/vit.py:") and "GELU" in gelu.fix
    assert not lint(fn, v, x, profile="ort_cpu_int8").of_kind("unsupported_op")
