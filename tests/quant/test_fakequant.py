"""Fake-quant rewrite: sites from the profile, close to float at high bit width,
straight-through and LSQ gradients, calibration estimators, per-layer sensitivity."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quant import calibration, fakequant, sensitivity
from quant.batchnorm_folding import fold_batchnorm
from quant.profile import QuantSpec, load_profile
from quant.quantizers import fake_quant, qparams_from_range, quant_error
from tests.quant import tiny_models


@pytest.fixture(scope="module")
def prepared():
    v = tiny_models.cnn_variables()
    x = tiny_models.images()
    fn2, v2, _ = fold_batchnorm(tiny_models.cnn, v, x)
    return fn2, v2, x


def test_sites_follow_the_profile(prepared):
    fn2, v2, x = prepared
    q = fakequant.quantize(fn2, v2, x, profile="ort_cpu_int8")
    weights = {n: s for n, s in q.sites.items() if s.kind == "weight"}
    acts = [s for s in q.sites.values() if s.kind == "activation"]
    assert set(weights) == {"c1/kernel", "c2/kernel", "c3/kernel", "head/kernel"}
    assert weights["c2/kernel"].scale_shape == (1, 1, 1, 8)         # per output channel
    assert weights["head/kernel"].scale_shape == (1, 10)
    # input, relu(c1) [feeds c2 and the add], relu(c2), c3 output [add], relu(add) [pool],
    # pooled features [head]
    assert len(acts) == 6
    per_tensor = fakequant.quantize(fn2, v2, x, profile="npu_int8_per_tensor")
    assert all(s.scale_shape == () for s in per_tensor.sites.values())


@pytest.mark.parametrize("bits, tolerance", [(8, 0.05), (16, 5e-4)])
def test_high_bit_width_is_close_to_float(prepared, bits, tolerance):
    fn2, v2, x = prepared
    profile = load_profile("ort_cpu_int8").with_weights(bits=bits).with_activations(bits=bits)
    q = fakequant.quantize(fn2, v2, x, profile=profile)
    qp = calibration.calibrate(q, v2, [x], method="minmax")
    ref = fn2(v2, x)
    out = jax.jit(q.fn(qp))(v2, x)
    rel = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
    assert rel < tolerance
    assert rel > 0                                   # it does quantize
    np.testing.assert_allclose(q.float_fn(v2, x), ref, rtol=1e-5, atol=1e-6)


def test_straight_through_and_lsq_gradients():
    spec = QuantSpec(4, symmetric=True)
    x = jnp.linspace(-2.0, 2.0, 41) + 0.013        # no value exactly on a clip bound
    scale = jnp.asarray(0.1)
    grad_x = jax.grad(lambda x: jnp.sum(fake_quant(x, scale, 0.0, spec.qmin, spec.qmax)))(x)
    v = np.asarray(x) / 0.1
    inside = np.abs(np.round(v)) <= spec.qmax              # rounds onto the grid
    np.testing.assert_allclose(np.asarray(grad_x)[inside], 1.0)      # STE inside the range
    np.testing.assert_allclose(np.asarray(grad_x)[~inside], 0.0)     # clipped outside
    grad_s = jax.grad(lambda s: jnp.sum(fake_quant(x, s, 0.0, spec.qmin, spec.qmax)))(scale)
    # LSQ: sum of (round(x/s) - x/s) inside plus qmax / qmin outside
    expected = np.where(inside, np.round(v) - v, np.clip(np.round(v), spec.qmin, spec.qmax))
    np.testing.assert_allclose(float(grad_s), expected.sum(), rtol=1e-4, atol=1e-4)


def test_range_estimators_on_outliers():
    spec = QuantSpec(8, symmetric=False, unsigned=True)
    rng = np.random.default_rng(0)
    values = np.abs(rng.standard_normal(50_000)).astype(np.float32)
    values[:5] = 100.0                                          # rare outliers
    obs = calibration.RangeObserver()
    obs.update(values)
    _, hi_minmax = calibration.activation_range(obs, spec, "minmax", 99.99)
    _, hi_pct = calibration.activation_range(obs, spec, "percentile", 99.9)
    assert hi_minmax == pytest.approx(100.0) and 3 < hi_pct < 4
    scale, zp = qparams_from_range(0.0, 2.55, spec)
    assert float(scale) == pytest.approx(0.01) and float(zp) == 0.0


def test_mse_range_beats_minmax_on_a_heavy_tail():
    spec = QuantSpec(4, symmetric=False, unsigned=True)
    values = np.abs(np.random.default_rng(0).laplace(size=50_000)).astype(np.float32)
    obs = calibration.RangeObserver(sample_size=200_000)
    obs.update(values)
    lo, hi = calibration.activation_range(obs, spec, "mse", 99.99)
    assert hi < 0.8 * values.max()
    assert quant_error(values, lo, hi, spec) < 0.7 * quant_error(values, 0.0, values.max(), spec)


def test_sensitivity_names_the_damaged_layer(prepared):
    fn2, v2, x = prepared
    q = fakequant.quantize(fn2, v2, x, profile="npu_w4a8")
    qp = calibration.calibrate(q, v2, [x], method="minmax")
    qp["scale"]["c2/kernel"] = qp["scale"]["c2/kernel"] * 8.0      # a ruined layer
    ranked = sensitivity.layer_sensitivity(q, v2, qp, [x])
    assert ranked[0].layer == "c2/kernel"
    assert ranked[0].kl > 3 * ranked[1].kl
    assert "tiny_models.py" in ranked[0].source


def test_site_values_of_a_depthwise_model_match_the_plain_forward():
    """The collector computes depthwise convs as shifted multiply-adds on CPU; the values it
    reports are those of the plain fake-quant forward."""
    from models import zoo
    fn, v, x = zoo.instantiate("mobilenetv2", batch=4)
    fn2, v2, _ = fold_batchnorm(fn, v, x)
    q = fakequant.quantize(fn2, v2, x)
    qp = calibration.calibrate(q, v2, [x], method="minmax")
    names = list(q.sites)[-3:]
    got = q.collector(names, enabled=None, qparams=qp)(v2, x)
    want = {}
    q.apply(v2, qp, x, observe=lambda s, value: want.__setitem__(s.name, value))
    for name in names:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4)
