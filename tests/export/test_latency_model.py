"""Latency model: ops from the jaxpr, table sums, calibration, differentiable in channels."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from export import latency_model as lm
from export import latency_table as lt
from export import runners
from models import zoo
from tests.export.test_latency_table import CountingRunner


@pytest.fixture(scope="module")
def resnet():
    return zoo.instantiate("resnet20", tiny=True, batch=1)


def test_ops_from_jaxpr(resnet):
    ops = lm.extract_ops(*resnet)
    kinds = [op.sig.kind for op in ops]
    assert kinds.count("conv") == 9 and kinds.count("dense") == 1
    # BatchNorm and ReLU after convs are folded: only residual adds and the mean remain.
    assert kinds.count("elementwise") <= 8
    stem = ops[0].sig
    assert (stem.get("cin"), stem.get("cout"), stem.get("h")) == (1, 4, 12)


def test_depthwise_and_pool_ops():
    def fn(v, x):
        y = jax.lax.conv_general_dilated(x, v["dw"], (1, 1), "SAME", dimension_numbers=(
            "NHWC", "HWIO", "NHWC"), feature_group_count=6)
        y = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        return y @ v["w"]
    v = {"dw": jnp.ones((3, 3, 1, 6)), "w": jnp.ones((6, 4))}
    ops = lm.extract_ops(fn, v, jnp.ones((1, 8, 8, 6)))
    assert [op.sig.kind for op in ops] == ["conv", "pool", "dense"]
    assert ops[0].sig.get("groups") == 6 and "groups" in ops[0].channel_axes
    assert ops[1].sig.get("h") == 8 and ops[1].sig.get("c") == 6
    assert ops[2].sig.get("m") == 16 and ops[2].sig.get("k") == 6


def test_exact_and_grid_predictions(resnet, tmp_path):
    table = lt.LatencyTable(CountingRunner("dev"), str(tmp_path / "t.json"), progress=False)
    ops = lm.extract_ops(*resnet)
    exact = lm.LatencyModel(table, mode="exact").predict_ops(ops)
    expected = sum(table.lookup(op.sig) for op in ops)
    assert exact == pytest.approx(expected)
    # Grid points are 1, 8, 16...: a 4-channel conv is interpolated between 1 and 8 channels.
    # This fake device's latency is bilinear in (cin, cout), so interpolation is exact.
    n_before = len(table)
    grid = lm.LatencyModel(table, mode="grid").predict_ops(ops)
    assert len(table) > n_before
    assert lt.conv_signature(1, 12, 12, 1, 8) in table
    assert grid == pytest.approx(exact, rel=1e-9)


def test_channel_grid():
    assert lm.channel_grid(20) == [1, 8, 16, 24]
    assert lm.channel_grid(20, include_limit=True) == [1, 8, 16, 20]
    grid = lm.channel_grid(300)
    assert grid[-1] >= 300 and all(b > a for a, b in zip(grid, grid[1:]))


def test_calibration_fit_recovers_linear_map():
    rng = np.random.default_rng(0)
    feats = rng.uniform(0.1, 2.0, (12, 3)) * [1, 1, 10]
    coef = (0.05, 0.7, 0.9, -0.001)
    y = coef[0] + feats @ np.array(coef[1:])
    fitted = lm.Calibration.fit(feats, y)
    np.testing.assert_allclose(fitted.coef, coef, atol=1e-8)


def test_differentiable_latency_matches_grid_at_full_and_has_gradients(resnet, tmp_path):
    table = lt.LatencyTable(CountingRunner("dev"), str(tmp_path / "t.json"), progress=False)
    model = lm.LatencyModel(table, mode="grid")
    latency, cost_model = model.differentiable(*resnet)
    full = jnp.asarray(cost_model.full_sizes)
    exact_full = lm.LatencyModel(table, mode="exact").predict(*resnet)
    assert float(latency(full)) == pytest.approx(exact_full, rel=1e-5)
    grads = jax.grad(latency)(full)
    assert np.all(np.isfinite(grads)) and np.any(np.asarray(grads) > 0)
    smaller = latency(full * 0.5)
    assert float(smaller) < float(latency(full))


class StaircaseRunner(runners.Runner):
    """A device whose convs cost ceil(cin / 16) steps: flat between 17 and 32 input
    channels, as blocked CPU kernels are. Dense layers cost nothing."""

    def __init__(self):
        self.name = "stairs"

    def measure(self, model, batch=1, inputs=None, runs=None, warmup=None):
        kernels = [i.dims for i in model.graph.initializer if len(i.dims) == 4]
        cost = sum(np.ceil(dims[1] / 16) for dims in kernels) * 1e-3
        return runners.summarize(self.name, [cost] * (runs or 3))


def test_latency_gradient_sees_savings_across_flat_steps(tmp_path):
    fn, variables, x = zoo.instantiate("resnet20", tiny=False, batch=1)
    table = lt.LatencyTable(StaircaseRunner(), str(tmp_path / "t.json"), progress=False)
    latency, cost_model = lm.LatencyModel(table, mode="grid").differentiable(fn, variables, x)
    full = np.asarray(cost_model.full_sizes, np.float32)
    widths = np.array([g.size for g in cost_model.groups])
    grads = np.asarray(jax.grad(latency)(jnp.asarray(full)))
    # Every 32- and 64-channel group feeds convs whose cost halves at half width, while
    # the fine grid is flat between 24 and 32 (48 and 64) input channels.
    wide = (widths == 32) | (widths == 64)
    half = np.where(wide, full / 2, full)
    assert float(latency(jnp.asarray(half))) < float(latency(jnp.asarray(full)))
    assert np.all(grads[wide] > 0), grads
    # The value is still the fine grid's interpolation (= exact at grid points).
    exact_full = lm.LatencyModel(table, mode="exact").predict(fn, variables, x)
    assert float(latency(jnp.asarray(full))) == pytest.approx(exact_full, rel=1e-5)
