"""factorize on real zoo models: full rank is the identity, the matrix view of each
primitive matches the primitive, the data-aware method beats SVD on the model's own
layer outputs, and a FLOPs budget is met (checked by core.cost on the result)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import lowrank
from core import cost, trace
from models import zoo


def _relative(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _full_ranks(fn, variables, x):
    sites, _ = lowrank.find_sites(trace.trace(fn, variables, x))
    return {s.path: s.geometry.full_rank * s.geometry.groups for s in sites}


@pytest.mark.parametrize("name,methods", [("resnet20", ("svd", "data")), ("vit", ("data",)),
                                          ("mixer", ("svd",)), ("regnet", ("data",))])
def test_full_rank_is_the_identity(name, methods):
    fn, variables, x = zoo.instantiate(name)
    ranks = _full_ranks(fn, variables, x)
    assert ranks
    expected = fn(variables, x)
    for method in methods:
        out = lowrank.factorize(fn, variables, x, ranks=ranks, method=method, data=[x])
        assert len(out.layers) == len(ranks)
        assert _relative(jax.jit(out.fn)(out.variables, x), expected) <= 1e-5


def test_sites_cover_attention_projections_and_refuse_depthwise():
    fn, variables, x = zoo.instantiate("vit")
    sites, _ = lowrank.find_sites(trace.trace(fn, variables, x))
    paths = {s.path for s in sites}
    for proj in ("query", "key", "value", "out"):
        assert f"params/block0/attn/{proj}/kernel" in paths
    fn, variables, x = zoo.instantiate("mobilenetv2")
    sites, refused = lowrank.find_sites(trace.trace(fn, variables, x))
    assert any("depthwise" in why for why in refused.values())
    assert all(s.geometry.m > s.geometry.n or s.geometry.groups == 1 for s in sites)


@pytest.mark.parametrize("groups,strides,dilation,padding", [
    (1, (1, 1), (1, 1), "SAME"), (2, (2, 2), (1, 1), ((1, 0), (2, 1))),
    (1, (1, 2), (2, 1), "VALID")])
def test_conv_matrix_view_matches_the_conv(groups, strides, dilation, padding):
    """input_matrix @ kernel_matrices == the conv, and the two factor kernels reproduce
    A @ B; checks the (channel, spatial) ordering of patches against kernels."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 9, 8, 4)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 2, 4 // groups, 6)), jnp.float32)

    def conv(params, x):
        return lax.conv_general_dilated(x, params["k"], strides, padding, rhs_dilation=dilation,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=groups)
    params = {"k": k}
    traced = trace.trace(conv, params, x)
    (site,), _ = lowrank.find_sites(traced)
    rule, eqn = site.rule, site.eqn
    w = rule.kernel_matrices(eqn, 1, k)                       # (groups, m, n)
    patches = rule.input_matrix(eqn, 1, x)                    # (groups, rows, m)
    y = conv(params, x)
    rows = jnp.concatenate([patches[g] @ w[g] for g in range(groups)], axis=1)
    np.testing.assert_allclose(rows, y.reshape(-1, y.shape[-1]), rtol=1e-4, atol=1e-4)
    r = 2
    a = jnp.asarray(rng.normal(size=(groups, w.shape[1], r)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(groups, r, w.shape[2])), jnp.float32)
    w0, w1 = rule.factor_arrays(eqn, 1, a, b)
    two = rule.apply(eqn, 1, [x, None], w0, w1)[0]
    dense = rule.kernel_matrices(eqn, 1, k)
    expected = jnp.concatenate([patches[g] @ (a[g] @ b[g]) for g in range(groups)], axis=1)
    np.testing.assert_allclose(two.reshape(-1, two.shape[-1]), expected, rtol=1e-4, atol=1e-4)
    assert dense.shape == (groups, 3 * 2 * 4 // groups, 6 // groups)


def test_dense_kernel_on_the_left_and_multi_axis_kernels():
    rng = np.random.default_rng(1)
    params = {"a": jnp.asarray(rng.normal(size=(5, 3, 4)), jnp.float32),    # (out, h, d)
              "b": jnp.asarray(rng.normal(size=(3, 4, 6)), jnp.float32)}    # (h, d, out)
    x = jnp.asarray(rng.normal(size=(2, 7, 3, 4)), jnp.float32)

    def f(p, x):
        y = jnp.einsum("ohd,bthd->obt", p["a"], x)                # kernel as lhs
        return jnp.einsum("bthd,hdo->bto", x, p["b"]) + y.transpose(1, 2, 0).sum(-1,
                                                                                 keepdims=True)
    out = lowrank.factorize(f, params, x, ranks={"a": 5, "b": 6}, method="svd")
    assert {layer.path for layer in out.layers} == {"a", "b"}
    assert _relative(out.fn(out.variables, x), f(params, x)) <= 1e-5
    low = lowrank.factorize(f, params, x, ranks={"a": 2, "b": 2}, method="svd")
    for path, out_features in (("a", 5), ("b", 6)):
        w0, w1 = low.variables[path]
        assert sorted(w0.shape) == [2, 3, 4] and w0.shape[-1] == 2      # (contracted..., r)
        assert w1.shape == (2, out_features)                            # (r, free...)


def _anisotropic_images(seed, shape, n):
    """Inputs whose pixels are strongly correlated (smooth images): far from isotropic."""
    rng = np.random.default_rng(seed)
    low = rng.normal(size=(n, 3, 3, shape[-1]))
    up = np.kron(low, np.ones((1, shape[0] // 3 + 1, shape[1] // 3 + 1, 1)))
    x = up[:, :shape[0], :shape[1]] + 0.05 * rng.normal(size=(n,) + shape)
    return jnp.asarray(x, jnp.float32)


@pytest.mark.parametrize("name", ["resnet20", "mixer"])
def test_data_aware_beats_svd_on_layer_outputs(name):
    """Measured by running each factorized layer on held-out inputs from the model."""
    fn, variables, x = zoo.instantiate(name)
    calib = [_anisotropic_images(s, x.shape[1:], 8) for s in range(2)]
    test = [_anisotropic_images(10, x.shape[1:], 8)]
    ranks = {p: max(1, r // 2) for p, r in _full_ranks(fn, variables, x).items()}
    errors = {}
    for method in ("svd", "data"):
        out = lowrank.factorize(fn, variables, x, ranks=ranks, method=method, data=calib)
        errors[method] = lowrank.isolated_errors(out, variables, test)
    paths = sorted(errors["svd"])
    mean = {m: np.mean([errors[m][p] for p in paths]) for m in errors}
    assert mean["data"] < 0.5 * mean["svd"], errors
    wins = sum(errors["data"][p] <= errors["svd"][p] + 1e-6 for p in paths)
    assert wins >= 0.8 * len(paths), errors


def test_flops_budget_is_met_and_matches_core_cost():
    fn, variables, x = zoo.instantiate("resnet20", batch=4)
    before = cost.count(fn, variables, x).flops
    for fraction in (0.75, 0.55):
        out = lowrank.factorize(fn, variables, x, budget=fraction, method="data", data=[x])
        after = cost.count(out.fn, out.variables, x).flops
        assert after <= fraction * before
        assert out.flops_after == pytest.approx(after, rel=1e-9)
        assert out.flops_before == pytest.approx(before, rel=1e-9)
        for layer in out.layers:            # only layers that got cheaper were touched
            assert layer.macs_factorized < layer.macs
        assert _relative(out.fn(out.variables, x), fn(variables, x)) < 2.0
    with pytest.raises(lowrank.BudgetError):
        lowrank.factorize(fn, variables, x, budget=0.05, method="svd")


def test_latency_budget_is_met_on_the_latency_model(tmp_path):
    """With a latency model (a deterministic fake device: latency ~ weights of each op) the
    allocation keeps the PREDICTED latency of the factorized model within the budget."""
    from export import latency_model as lm, latency_table as lt
    from tests.export.test_latency_table import CountingRunner
    fn, variables, x = zoo.instantiate("resnet20", batch=1)
    table = lt.LatencyTable(CountingRunner("fake"), str(tmp_path / "t.json"), progress=False)
    model = lm.LatencyModel(table, lm.Calibration((0.01, 1.0, 1.0, 0.002)))
    before = model.predict(fn, variables, x)
    out = lowrank.factorize(fn, variables, x, budget={"latency": 0.7}, method="svd",
                            latency_model=model)
    assert out.layers
    assert model.predict(out.fn, out.variables, x) <= 0.7 * before * (1 + 1e-9)


@pytest.mark.parametrize("rank,error", [(-3, ValueError), (0, ValueError), (6, ValueError),
                                        (2.7, TypeError), (3.0, TypeError),
                                        (True, TypeError)])
def test_invalid_ranks_are_refused_naming_the_layer_and_range(rank, error):
    """-3 used to build rank 9 (a slice to full - 3) while reporting -3, 0 dropped the
    layer and 2.7 was truncated: each is now an error naming the path and 1..full rank."""
    rng = np.random.default_rng(0)
    params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)},
              "head": {"kernel": jnp.asarray(rng.normal(size=(5, 12)), jnp.float32)}}
    x = jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)
    f = lambda p, x: jnp.tanh(x @ p["dense"]["kernel"]) @ p["head"]["kernel"]
    with pytest.raises(error, match=r"'dense/kernel'.*1\.\.5 "):
        lowrank.factorize(f, params, x, ranks={"dense/kernel": rank, "head/kernel": 2},
                          method="svd")
    ok = lowrank.factorize(f, params, x, ranks={"dense/kernel": np.int64(5), "head/kernel": 1},
                           method="svd")
    assert ok.ranks() == {"dense/kernel": 5, "head/kernel": 1}
    assert ok.variables["head"]["kernel"][0].shape == (5, 1)


def test_grouped_conv_rank_range_counts_every_group():
    """A grouped conv's total rank may go up to groups x the per-group full rank."""
    rng = np.random.default_rng(1)
    k = jnp.asarray(rng.normal(size=(1, 1, 4, 6)), jnp.float32)        # 2 groups: 4x3 each
    x = jnp.asarray(rng.normal(size=(2, 5, 5, 8)), jnp.float32)
    conv = lambda p, x: lax.conv_general_dilated(
        x, p["k"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=2)
    with pytest.raises(ValueError, match=r"'k'.*1\.\.6 .*times 2 groups"):
        lowrank.factorize(conv, {"k": k}, x, ranks={"k": 7}, method="svd")
    full = lowrank.factorize(conv, {"k": k}, x, ranks={"k": 6}, method="svd")
    assert full.ranks() == {"k": 6}
    assert _relative(full.fn(full.variables, x), conv({"k": k}, x)) <= 1e-5
