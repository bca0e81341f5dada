"""Products of two activations in int8 where the runner has an integer kernel for them:
with ``mul`` and ``logistic`` among the profile's ``quantize_inputs_of`` (what the
real-model int8 stage asks for, experiments/real_model_int8.py), a hard-swish and a
squeeze-excitation gate between convs run as QLinearMul / QLinearSigmoid in onnxruntime
(the independent reference: its own optimized graph), and no float Mul is left. With the
plain profile the products stay float, as before."""
import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data import real_images
from quant import calibration, fakequant, qdq_export
from quant.profile import load_profile


def _conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _model(v, x):
    """conv -> hard-swish -> conv -> squeeze-excitation gate -> conv -> mean pool."""
    y = _conv(x, v["c1"])
    y = y * (jnp.clip(y + 3.0, 0.0, 6.0) / 6.0)
    z = _conv(y, v["c2"])
    z = z * jax.nn.sigmoid(_conv(z, v["gate"]))
    return jnp.mean(_conv(z, v["c3"]), axis=(1, 2))


@pytest.fixture(scope="module")
def images():
    try:
        rgb = real_images.load("calibration", size=(16, 16), limit=8, dtype=np.float32)
    except real_images.RealImagesUnavailable as error:
        pytest.skip(f"no real images here: {error}")
    return rgb / 255.0


def _kernels(profile, x):
    rng = np.random.default_rng(0)
    v = {name: (rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[:3]))).astype(
        np.float32) for name, shape in
         (("c1", (3, 3, 3, 8)), ("c2", (3, 3, 8, 8)), ("gate", (1, 1, 8, 8)),
          ("c3", (3, 3, 8, 4)))}
    q = fakequant.quantize(_model, v, x, profile=profile)
    qp = calibration.calibrate(q, v, [x], method="minmax")
    exported = qdq_export.to_qdq_onnx(q, v, qp, x)
    check = qdq_export.check(exported.model, q, v, qp, x)
    return check, collections.Counter(n.op_type for n in exported.model.graph.node)


def _with_products(profile):
    return dataclasses.replace(profile, quantize_inputs_of=profile.quantize_inputs_of
                               | {"mul", "logistic"})


def test_products_run_as_integer_kernels_when_the_profile_requantizes_them(images):
    base = load_profile("ort_cpu_int8")
    check, _ = _kernels(_with_products(base), images)
    assert check.integer_ops.get("QLinearConv", 0) == 4, check
    assert check.integer_ops.get("QLinearMul", 0) == 2, check      # hard-swish, gate
    assert check.integer_ops.get("QLinearSigmoid", 0) == 1, check
    assert check.max_abs_error <= 0.05 * check.output_scale, check
    plain, _ = _kernels(base, images)
    assert plain.integer_ops.get("QLinearMul", 0) == 0, plain
