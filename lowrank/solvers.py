"""Rank-r factors of a kernel matrix: plain truncated SVD, and the data-aware closed form.

SVD keeps the directions of largest WEIGHT energy, as if inputs were isotropic. What a
layer must preserve is its OUTPUT on real inputs X: min ||X W - X W'||_F over rank-r W'.
With the input second-moment matrix G = X^T X = R^T R this is min ||R W - R W'||, and by
Eckart-Young its optimum is ``W' = W V_r V_r^T`` where V_r are the top right singular
vectors of R W (equivalently the top principal directions of the outputs X W). So
``W0 = W V_r`` and ``W1 = V_r^T``: no inverse of R is ever formed, which keeps the
solution stable when X is rank-deficient (dead ReLU channels, constant padding). R comes
from ``eigh`` of G in float64, with a small ridge ``eps * mean(diag G)``.

Every function works on a stack of ``groups`` independent matrices (grouped convs). Error
curves give the relative output error at every rank in one SVD, for rank allocation:
``err(r) = tr(D^T G D) / tr(W^T G W)`` with D = W - W'_r.
"""
from typing import Optional, Tuple

import numpy as np


def _as64(a) -> np.ndarray:
    return np.asarray(a, np.float64)


def gram_root(gram, eps: float = 1e-6) -> np.ndarray:
    """R with R^T R = G + eps * mean(diag G) * I (per group), from eigh in float64."""
    gram = _as64(gram)
    m = gram.shape[-1]
    scale = np.maximum(np.trace(gram, axis1=-2, axis2=-1) / m, 1e-30)
    reg = gram + eps * scale[:, None, None] * np.eye(m)
    lam, q = np.linalg.eigh(0.5 * (reg + np.swapaxes(reg, -1, -2)))
    lam = np.clip(lam, 0.0, None)
    return np.sqrt(lam)[:, :, None] * np.swapaxes(q, -1, -2)


def svd_factors(w, rank: int) -> Tuple[np.ndarray, np.ndarray]:
    """Truncated SVD, balanced: A = U_r sqrt(S_r), B = sqrt(S_r) V_r^T."""
    u, s, vt = np.linalg.svd(_as64(w), full_matrices=False)
    root = np.sqrt(s[:, :rank])
    return u[:, :, :rank] * root[:, None, :], root[:, :, None] * vt[:, :rank, :]


def output_directions(w, gram, eps: float = 1e-6) -> np.ndarray:
    """Right singular vectors (columns, best first) of R W: the output directions that
    carry the most energy on the data, shape (groups, n, min(m, n))."""
    m_ = np.matmul(gram_root(gram, eps), _as64(w))
    _, _, vt = np.linalg.svd(m_, full_matrices=False)
    return np.swapaxes(vt, -1, -2)


def data_aware_factors(w, gram, rank: int, eps: float = 1e-6
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """The rank-r minimizer of ||X W - X W'||: A = W V_r, B = V_r^T."""
    v = output_directions(w, gram, eps)[:, :, :rank]
    return np.matmul(_as64(w), v), np.swapaxes(v, -1, -2)


def output_error(w, a, b, gram) -> float:
    """Relative output error tr(D^T G D) / tr(W^T G W) of W ~ A B on data with Gram G."""
    w, gram = _as64(w), _as64(gram)
    d = w - np.matmul(_as64(a), _as64(b))
    num = np.einsum("gmn,gmk,gkn->", d, gram, d)
    den = np.einsum("gmn,gmk,gkn->", w, gram, w)
    return float(num / max(den, 1e-30))


def weight_error(w, a, b) -> float:
    w = _as64(w)
    d = w - np.matmul(_as64(a), _as64(b))
    return float(np.sum(d * d) / max(np.sum(w * w), 1e-30))


def _tail_sums(energy: np.ndarray) -> np.ndarray:
    """energy (groups, k) per direction -> (k + 1,) total energy left out at ranks 0..k."""
    per_rank = energy.sum(axis=0)
    return np.concatenate([np.cumsum(per_rank[::-1])[::-1], [0.0]])


def error_curve(w, method: str, gram: Optional[np.ndarray] = None,
                eps: float = 1e-6) -> np.ndarray:
    """Relative error at every rank per group 0..min(m, n) for ``method`` ('svd' or 'data').

    With a Gram matrix the error is measured on the outputs (for SVD too: its truncation
    evaluated on the data); without one, on the weights.
    """
    w = _as64(w)
    if gram is None:
        s = np.linalg.svd(w, compute_uv=False)
        return _tail_sums(s ** 2) / max(np.sum(w * w), 1e-30)
    gram = _as64(gram)
    output_cov = np.einsum("gmn,gmk,gkl->gnl", w, gram, w)      # W^T G W
    total = max(np.trace(output_cov, axis1=-2, axis2=-1).sum(), 1e-30)
    if method == "svd":
        u, s, _ = np.linalg.svd(w, full_matrices=False)
        energy = s ** 2 * np.einsum("gmi,gmk,gki->gi", u, gram, u)
    elif method == "data":
        v = output_directions(w, gram, eps)
        energy = np.einsum("gni,gnl,gli->gi", v, output_cov, v)
    else:
        raise ValueError(f"no error curve for method {method!r}")
    return np.clip(_tail_sums(energy) / total, 0.0, None)


SOLVERS = {"svd": lambda w, gram, rank, eps: svd_factors(w, rank),
           "data": data_aware_factors}


def solve(method: str, w, gram, rank: int, eps: float = 1e-6):
    """Factors (A, B) of the (groups, m, n) kernel at rank ``rank`` per group."""
    if method not in SOLVERS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(SOLVERS)}")
    if method != "svd" and gram is None:
        raise ValueError(f"method {method!r} needs calibration data (data=...)")
    return SOLVERS[method](w, gram, rank, eps)
