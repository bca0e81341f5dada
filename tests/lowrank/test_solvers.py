"""The matrix-level methods: the closed form is the optimal rank-r fit of the OUTPUTS and
beats SVD on anisotropic data; error curves agree with the factors; the DP allocation is
the exact optimum of its knapsack."""
import itertools

import numpy as np
import pytest

from lowrank import allocation, solvers


def _anisotropic_inputs(rng, rows, m, decay=4.0):
    """Rows with a covariance far from isotropic: eigenvalues spanning `decay` decades,
    in a random basis (like real activations), plus a nonzero mean."""
    basis, _ = np.linalg.qr(rng.normal(size=(m, m)))
    scales = np.logspace(0, -decay / 2, m)
    return (rng.normal(size=(rows, m)) * scales) @ basis.T + 0.3 * rng.normal(size=m)


@pytest.mark.parametrize("seed,m,n,groups", [(0, 24, 16, 1), (1, 16, 40, 1), (2, 32, 32, 2),
                                             (3, 12, 7, 3), (4, 50, 20, 1)])
def test_closed_form_beats_svd_in_output_error(seed, m, n, groups):
    rng = np.random.default_rng(seed)
    xs = [_anisotropic_inputs(rng, 400, m) for _ in range(groups)]
    gram = np.stack([x.T @ x for x in xs])
    w = rng.normal(size=(groups, m, n))
    for rank in sorted({1, min(m, n) // 4 or 1, min(m, n) // 2, min(m, n) - 1}):
        a_d, b_d = solvers.data_aware_factors(w, gram, rank, eps=0.0)
        a_s, b_s = solvers.svd_factors(w, rank)
        assert a_d.shape == (groups, m, rank) and b_d.shape == (groups, rank, n)
        # Measured directly on the outputs, not through the solver's own formula.
        err = lambda a, b: sum(np.sum((x @ w[g] - x @ a[g] @ b[g]) ** 2) for g, x in
                               enumerate(xs)) / sum(np.sum((x @ w[g]) ** 2)
                                                    for g, x in enumerate(xs))
        e_data, e_svd = err(a_d, b_d), err(a_s, b_s)
        assert e_data <= e_svd * (1 + 1e-9) + 1e-12
        assert e_data < 0.9 * e_svd, (rank, e_data, e_svd)
        # Optimality: the error equals the tail of the singular values of R W (Eckart-Young).
        root = solvers.gram_root(gram, eps=0.0)
        s = np.linalg.svd(root @ w, compute_uv=False)
        np.testing.assert_allclose(e_data, np.sum(s[:, rank:] ** 2) / np.sum(s ** 2),
                                   rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(solvers.output_error(w, a_d, b_d, gram), e_data, rtol=1e-8)
        # The error curves give the same numbers at that rank, for both methods.
        np.testing.assert_allclose(solvers.error_curve(w, "data", gram, eps=0.0)[rank],
                                   e_data, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(solvers.error_curve(w, "svd", gram)[rank], e_svd,
                                   rtol=1e-6, atol=1e-12)


def test_closed_form_is_stable_on_rank_deficient_inputs():
    """Dead channels (zero columns of X) make X^T X singular: no NaN, still optimal."""
    rng = np.random.default_rng(7)
    x = _anisotropic_inputs(rng, 300, 20)
    x[:, 5:12] = 0.0
    w = rng.normal(size=(1, 20, 10))
    a, b = solvers.data_aware_factors(w, (x.T @ x)[None], 4)
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    a_s, b_s = solvers.svd_factors(w, 4)
    gram = (x.T @ x)[None]
    assert solvers.output_error(w, a, b, gram) < solvers.output_error(w, a_s, b_s, gram)


def test_full_rank_reconstructs_the_kernel():
    rng = np.random.default_rng(3)
    for m, n in [(9, 4), (4, 9), (6, 6)]:
        w = rng.normal(size=(2, m, n))
        gram = np.stack([np.cov(rng.normal(size=(m, 50))) for _ in range(2)])
        for a, b in (solvers.svd_factors(w, min(m, n)),
                     solvers.data_aware_factors(w, gram, min(m, n))):
            np.testing.assert_allclose(a @ b, w, atol=1e-10)


def test_error_curve_without_data_is_weight_error():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(1, 10, 6))
    curve = solvers.error_curve(w, "svd")
    assert curve[0] == pytest.approx(1.0) and curve[-1] == pytest.approx(0.0, abs=1e-12)
    a, b = solvers.svd_factors(w, 3)
    assert curve[3] == pytest.approx(solvers.weight_error(w, a, b), rel=1e-9)
    assert np.all(np.diff(curve) <= 1e-12)


def test_dp_allocation_is_the_exact_knapsack_optimum():
    rng = np.random.default_rng(11)
    options = []
    for i in range(4):
        k = 4
        costs = np.concatenate([[100.0], np.sort(rng.uniform(10, 90, k))[::-1]])
        errors = np.concatenate([[0.0], np.sort(rng.uniform(0, 1, k))])
        options.append(allocation.SiteOptions(f"s{i}", [None, 4, 3, 2, 1], costs, errors))
    fixed, budget = 50.0, 300.0
    got = allocation.allocate(options, fixed, budget, resolution=20000)
    best = None
    for combo in itertools.product(range(5), repeat=4):
        cost = fixed + sum(o.costs[c] for o, c in zip(options, combo))
        err = sum(o.errors[c] for o, c in zip(options, combo))
        if cost <= budget and (best is None or err < best[0]):
            best = (err, combo)
    got_err = sum(o.errors[o.ranks.index(got[o.path])] for o in options)
    assert fixed + allocation.chosen_cost(options, got) <= budget
    assert got_err == pytest.approx(best[0], abs=1e-3)
    with pytest.raises(allocation.BudgetError):
        allocation.allocate(options, fixed, fixed + 10.0)
