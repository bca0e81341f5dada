"""Calibration data that is not finite: a NaN image among good batches must not touch the
ranges (it used to leave finite scales that were wrong by the full output range)."""
import jax.numpy as jnp
import numpy as np
import pytest

from quant import calibration, fakequant
from quant.batchnorm_folding import fold_batchnorm
from tests.quant import tiny_models


@pytest.fixture(scope="module")
def model():
    v = tiny_models.cnn_variables()
    x = tiny_models.images(8)
    fn2, v2, _ = fold_batchnorm(tiny_models.cnn, v, x)
    return fakequant.quantize(fn2, v2, x, profile="ort_cpu_int8"), v2


def _qparams_equal(a, b):
    for kind in ("scale", "zero_point"):
        assert set(a[kind]) == set(b[kind])
        for name in a[kind]:
            np.testing.assert_array_equal(a[kind][name], b[kind][name], err_msg=name)


@pytest.mark.parametrize("method", ["minmax", "mse"])
def test_nan_batch_is_skipped_and_named(model, method):
    q, v2 = model
    good = [tiny_models.images(8, seed=s) for s in (1, 2)]
    bad = good[0].at[3, 4, 5, 0].set(jnp.nan)               # one NaN pixel in one image
    reference = calibration.calibrate(q, v2, good, method=method)
    with pytest.warns(RuntimeWarning, match=r"batch 1 skipped: the input"):
        got = calibration.calibrate(q, v2, [good[0], bad, (good[1], None)], method=method)
    _qparams_equal(got, reference)
    assert all(np.all(np.isfinite(s)) for s in got["scale"].values())


def test_overflowing_activation_is_skipped(model):
    """A finite input whose activations overflow (here, huge pixels) is skipped too."""
    q, v2 = model
    good = tiny_models.images(8, seed=1)
    huge = jnp.full_like(good, 3e38)
    with pytest.warns(RuntimeWarning, match=r"batch 0 skipped: activation"):
        got = calibration.calibrate(q, v2, [huge, good], method="minmax")
    _qparams_equal(got, calibration.calibrate(q, v2, [good], method="minmax"))


def test_every_batch_non_finite_is_an_error(model):
    q, v2 = model
    bad = tiny_models.images(8).at[0].set(jnp.nan)
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="every one of the 2"):
        calibration.calibrate(q, v2, [bad, bad], method="minmax")
