"""Regression: jaxlib 0.10.2's XLA:CPU YNNPACK fusion computed this graph wrongly (jit and
eager differed by 7.0). The project turns the fusion off before JAX builds its backend;
these tests fail if the wrong numbers come back, in this process or in a user's."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from core import xla_workarounds

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    shapes = dict(w0=(5, 5, 3, 24), b0=(24,), d1=(3, 3, 1, 24), p1=(1, 1, 24, 24),
                  d2=(3, 3, 1, 24), p2=(1, 1, 24, 28))
    return {k: rng.normal(0, 0.3, s).astype(np.float32) for k, s in shapes.items()}


def _conv(x, kernel, stride=1, groups=1):
    return lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                    dimension_numbers=DIMENSIONS, feature_group_count=groups)


def miscompiled_pattern(p, x):
    """conv -> depthwise -> residual add with a channel pad -> 2x2 max-pool."""
    h = jax.nn.relu(_conv(x, p["w0"], 2) + p["b0"])
    h = jax.nn.relu(h + _conv(_conv(h, p["d1"], groups=24), p["p1"]))
    h = jax.nn.relu(jnp.pad(h, ((0, 0), (0, 0), (0, 0), (0, 4)))
                    + _conv(_conv(h, p["d2"], groups=24), p["p2"]))
    return lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def _numpy_conv_same(x, kernel, stride=1, depthwise=False):
    """Independent reference: SAME convolution by explicit patches in float64 numpy."""
    kh, kw, _, cout = kernel.shape
    n, h, w, c = x.shape
    out_h, out_w = -(-h // stride), -(-w // stride)
    pad_h = max((out_h - 1) * stride + kh - h, 0)
    pad_w = max((out_w - 1) * stride + kw - w, 0)
    xp = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                    (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    out = np.zeros((n, out_h, out_w, cout))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i:i + stride * out_h:stride, j:j + stride * out_w:stride, :]
            if depthwise:
                out += patch * kernel[i, j, 0]
            else:
                out += patch @ kernel[i, j]
    return out


def _numpy_reference(p, x):
    relu = lambda a: np.maximum(a, 0)  # noqa: E731
    p = {k: v.astype(np.float64) for k, v in p.items()}
    h = relu(_numpy_conv_same(x.astype(np.float64), p["w0"], 2) + p["b0"])
    h = relu(h + _numpy_conv_same(_numpy_conv_same(h, p["d1"], depthwise=True), p["p1"]))
    h = relu(np.pad(h, ((0, 0), (0, 0), (0, 0), (0, 4)))
             + _numpy_conv_same(_numpy_conv_same(h, p["d2"], depthwise=True), p["p2"]))
    n, hh, ww, c = h.shape
    return h.reshape(n, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))


def _real_image(size=128):
    """A real photograph-like input: Fashion-MNIST digits tiled to 128x128x3 in [0, 1]."""
    from data import fashion_mnist
    images = np.asarray(fashion_mnist.load_split("test")[0][:25], np.float32).reshape(25, 28, 28)
    grid = np.block([[images[5 * r + c] for c in range(5)] for r in range(5)])[:size, :size]
    grid = np.pad(grid, ((0, size - grid.shape[0]), (0, size - grid.shape[1])))
    grid = grid / max(float(grid.max()), 1.0)
    return np.stack([grid, grid[::-1], grid[:, ::-1]], -1)[None].astype(np.float32)


def test_jit_matches_eager_and_numpy_on_the_miscompiled_pattern():
    p, x = _weights(), _real_image()
    reference = _numpy_reference(p, x)
    jitted = np.asarray(jax.jit(miscompiled_pattern)(p, x))
    eager = np.asarray(miscompiled_pattern(p, x))
    scale = float(np.abs(reference).max())
    assert scale > 1.0
    np.testing.assert_allclose(eager, reference, atol=1e-4 * scale, rtol=0)
    np.testing.assert_allclose(jitted, reference, atol=1e-4 * scale, rtol=0)


def test_the_workaround_is_in_xla_flags_for_this_jaxlib():
    for flag in xla_workarounds.flags_needed():
        assert flag in os.environ.get("XLA_FLAGS", "").split()


def test_unknown_releases_get_no_flag_that_would_abort_xla():
    assert xla_workarounds.flags_needed((0, 10)) == (
        "--xla_cpu_experimental_ynn_fusion_type=individual_dot",)
    assert xla_workarounds.flags_needed((0, 12)) == ()


def _run_child(code, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


CHILD_COMPUTES = """
    import sys; sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    {first}
    import numpy as np, jax
    from test_xla_workarounds import _weights, miscompiled_pattern
    p = _weights(); x = np.random.default_rng(1).uniform(0, 1, (1, 128, 128, 3)).astype('f4')
    print('ERR', float(np.abs(jax.jit(miscompiled_pattern)(p, x) - miscompiled_pattern(p, x)).max()))
"""


def test_a_user_importing_any_package_gets_correct_jit_results():
    """A fresh process with no XLA_FLAGS that imports jax first, then the library."""
    code = CHILD_COMPUTES.format(root=ROOT, tests=os.path.join(ROOT, "tests", "core"),
                                 first="import jax; import pruning")
    result = _run_child(code)
    assert result.returncode == 0, result.stderr
    error = float(result.stdout.split("ERR")[-1])
    assert error < 1e-4, f"jit and eager differ by {error}: the XLA workaround is not active"


def test_a_backend_built_before_import_is_reported():
    code = """
        import sys, warnings; sys.path.insert(0, {root!r})
        import jax; jax.devices()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import core
        print('WARNED', any('not active' in str(w.message) for w in caught))
    """.format(root=ROOT)
    result = _run_child(code)
    assert result.returncode == 0, result.stderr
    expected = bool(xla_workarounds.flags_needed())
    assert f"WARNED {expected}" in result.stdout
