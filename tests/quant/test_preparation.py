"""BatchNorm folding is exact; equalization keeps the float function; bias correction
removes the mean output shift of weight rounding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quant import bias_correction, calibration, equalization, fakequant
from quant.batchnorm_folding import fold_batchnorm
from tests.quant import tiny_models


@pytest.fixture(scope="module")
def folded():
    v = tiny_models.cnn_variables()
    x = tiny_models.images()
    fn2, v2, ops = fold_batchnorm(tiny_models.cnn, v, x)
    return v, x, fn2, v2, ops


def test_fold_handwritten_batchnorm_is_exact(folded):
    v, x, fn2, v2, ops = folded
    assert len(ops) == 4                                 # three convs and the head
    assert [len(o.chain) for o in ops[:3]] == [4, 4, 4]  # sub, mul, mul, add per BN
    assert len(ops[3].chain) == 1                        # the head's bias
    assert "bn1" not in v2 and "c1" in v2 and set(v2["c1"]) == {"kernel", "bias"}
    np.testing.assert_allclose(fn2(v2, x), tiny_models.cnn(v, x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_fold_flax_batchnorm_in_zoo_model():
    from models import zoo
    fn, v, x = zoo.instantiate("mobilenetv2", tiny=True, batch=2)
    fn2, v2, ops = fold_batchnorm(fn, v, x)
    assert "batch_stats" not in v2
    assert sum(len(o.chain) == 3 for o in ops) == len(
        jax.tree_util.tree_leaves(v["batch_stats"])) // 2
    np.testing.assert_allclose(fn2(v2, x), fn(v, x), rtol=1e-5, atol=1e-5)


def _ranges(w, axis):
    return np.abs(np.moveaxis(np.asarray(w), axis, 0)).reshape(w.shape[axis], -1).max(1)


def test_equalization_keeps_function_and_equalizes_ranges(folded):
    _, x, fn2, v2, _ = folded
    v2 = jax.tree.map(lambda a: a, v2)
    v2["c2"]["kernel"] = v2["c2"]["kernel"].at[..., 0].multiply(50.0)  # a wild channel
    v2["c2"]["bias"] = v2["c2"]["bias"].at[0].multiply(50.0)
    v2["c3"]["kernel"] = v2["c3"]["kernel"].at[:, :, 0, :].multiply(1 / 50.0)
    before = fn2(v2, x)
    v3, pairs = equalization.equalize(fn2, v2, x)
    # c1's output also feeds the residual add, so only c2 -> relu -> c3 is a pair.
    assert [(p.first_kernel, p.second_kernel) for p in pairs] == [("c2/kernel", "c3/kernel")]
    np.testing.assert_allclose(fn2(v3, x), before, rtol=1e-4, atol=1e-5)
    for p in pairs:
        r1 = _ranges(equalization._get_path(v3, p.first_kernel), p.first_axis)
        r2 = _ranges(equalization._get_path(v3, p.second_kernel), p.second_axis)
        np.testing.assert_allclose(r1, r2, rtol=1e-3)


def test_equalization_on_depthwise_pair():
    """conv -> relu -> depthwise conv: channel i of the first is output i of the second."""
    rng = np.random.default_rng(0)
    v = {"a": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 1, 4)), jnp.float32),
               "bias": jnp.asarray(rng.standard_normal(4), jnp.float32)},
         "b": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 1, 4)) * [1, 10, 0.1, 3],
                                     jnp.float32)}}

    def fn(v, x):
        y = jax.nn.relu(tiny_models.conv(x, v["a"]["kernel"]) + v["a"]["bias"])
        return jax.lax.conv_general_dilated(y, v["b"]["kernel"], (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=4)
    x = tiny_models.images(2, 6)
    v2, pairs = equalization.equalize(fn, v, x)
    assert len(pairs) == 1 and pairs[0].depthwise_multiplier == 1
    np.testing.assert_allclose(fn(v2, x), fn(v, x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_ranges(v2["a"]["kernel"], 3), _ranges(v2["b"]["kernel"], 3),
                               rtol=1e-3)


def test_bias_correction_removes_mean_shift(folded):
    _, x, fn2, v2, _ = folded
    q = fakequant.quantize(fn2, v2, x, profile="npu_w4a8")   # 4-bit weights: a real bias
    weights_only = [n for n, s in q.sites.items() if s.kind == "weight"]
    qp = calibration.calibrate(q, v2, [x], method="minmax")
    v3, corrected = bias_correction.bias_correction(q, v2, qp, [x])
    assert set(corrected) == set(weights_only)

    def mean_error(v):
        qp_v = calibration.update_weight_qparams(q, v, qp, x)
        out = q.apply(v, qp_v, x, enabled=weights_only)
        return float(jnp.abs(jnp.mean(out - fn2(v2, x), axis=0)).mean())
    assert mean_error(v3) < mean_error(v2)


@pytest.mark.parametrize("name", ["mobilenetv2", "vit"])
def test_equalization_on_zoo_models_keeps_the_function(name):
    """ReLU6 (min with a literal) and GELU (a unary op) after a linear layer end no pair
    and crash nothing; whatever pairs are found leave the float function unchanged."""
    from models import zoo
    fn, variables, x = zoo.instantiate(name, batch=4)
    fn2, v2, _ = fold_batchnorm(fn, variables, x)
    v3, pairs = equalization.equalize(fn2, v2, x)
    np.testing.assert_allclose(fn2(v3, x), fn2(v2, x), rtol=1e-3, atol=1e-4)
    if name == "vit":
        assert pairs == []          # GELU is not positively homogeneous
