"""The spectral norm of one explicit matrix: a Lanczos estimate of its Gram matrix's top eigenvalue, certified by one
Cholesky factorisation (far cheaper than an SVD: one Gram product and one factorisation of the smaller side).

Certificate. The matrix is first scaled by a power of two (exact) to a largest entry in [0.5, 1). With
H = fl(K^T K), ``||H - K^T K||_2 <= e = gamma_p ||K||_F^2`` (Higham, "Accuracy and Stability of Numerical
Algorithms", 3.5; p the inner dimension). For a trial value s, the matrix A = fl(s I - H) differs from s I - H by at
most ``u (s + max h_ii)`` on the diagonal. If the floating-point Cholesky factorisation of A runs to completion,
A + r I is positive definite with ``r = 8 gamma_{2n+2} tr(A)`` (Rump, "Verification of positive definiteness", BIT
Numer. Math. 46, 2006, proves it with gamma_{n+1} / (1 - gamma_{n+1}); we take a larger factor), so

    lambda_max(K^T K) <= lambda_max(H) + e < s + r + u (s + max h_ii) + e,

every term rounded upward. A tiny absolute term covers underflow (the scaled top eigenvalue is at least 1 / 4).
If no trial passes, the Frobenius norm of H bounds lambda_max(H) instead.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from certify.lipschitz.gram import U64, frobenius_upper, matmul_gamma, round_up

_TINY = 2.0**-900
_DENSE_EIGEN_MAX = 64  # below this size a full symmetric eigendecomposition is cheaper than Lanczos
_TRIALS = (1e-9, 1e-7, 1e-5, 1e-3)  # relative headroom above the estimate, tried in turn


def top_eigenpair(h: torch.Tensor) -> tuple[float, torch.Tensor]:
    """An estimate of the largest eigenvalue of a symmetric float64 matrix and its eigenvector: dense for small
    matrices, Lanczos (ARPACK ``eigsh``) with torch products above (numpy's matrix-vector product can be an order of
    magnitude slower when its BLAS threads compete with torch's)."""
    n = h.shape[0]
    if n <= _DENSE_EIGEN_MAX:
        values, vectors = torch.linalg.eigh(h)
        return float(values[-1]), vectors[:, -1]
    from scipy.sparse.linalg import ArpackError, LinearOperator, eigsh

    def matvec(v: np.ndarray) -> np.ndarray:
        return (h @ torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(-1))).numpy()

    start = np.ones(n) + np.linspace(0.0, 1e-3, n)
    try:
        values, vectors = eigsh(LinearOperator((n, n), matvec=matvec, dtype=np.float64), k=1, which="LA", tol=1e-12,
                                v0=start)
    except ArpackError:
        values, vectors = torch.linalg.eigh(h)
        return float(values[-1]), vectors[:, -1]
    return float(values[0]), torch.from_numpy(np.ascontiguousarray(vectors[:, 0]))


def certify_top(h: torch.Tensor, estimate: float, error: float) -> float:
    """A guaranteed upper bound of ``lambda_max(G)`` for a PSD G with ``||h - G||_2 <= error`` (``h`` symmetric,
    float64, nonnegative diagonal): the first trial ``s = estimate (1 + t)`` whose Cholesky certificate passes."""
    n = h.shape[0]
    if n == 0:
        return 0.0
    h_max = float(h.diagonal().max())
    nu = 2.0 * (n + 1) * U64
    gamma = nu / (1.0 - nu)
    for headroom in _TRIALS:
        s = round_up(max(estimate, 0.0) * (1.0 + headroom)) + _TINY
        a = -h
        a.diagonal().add_(s)
        if int(torch.linalg.cholesky_ex(a)[1]) == 0:
            r = round_up(8.0 * gamma * round_up(n * round_up(s * (1.0 + U64))))
            return round_up(round_up(round_up(s + r) + round_up(U64 * (s + h_max) * 1.01)) + error) + _TINY
    return round_up(float(frobenius_upper(h.unsqueeze(0))[0]) + error)


def certified_norm(matrix: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """``(upper, lower, v)``: a guaranteed upper bound of ``||matrix||_2``, the achieved ratio ``||M v|| / ||v||``
    and the right vector v (float64, in the matrix's input space)."""
    m = matrix.detach().to(torch.float64)
    if m.numel() == 0 or not bool(m.ne(0).any()):
        return 0.0, 0.0, m.new_zeros(m.shape[1])
    exponent = math.frexp(float(m.abs().max()))[1]
    k = m * 2.0**-exponent  # exact (a power of two)
    wide = k.shape[0] < k.shape[1]
    oriented = k.T if wide else k  # the Gram matrix of the smaller side
    h = oriented.T @ oriented
    error = round_up(matmul_gamma(oriented.shape[0]) * float(frobenius_upper(oriented.unsqueeze(0))[0]) ** 2) + _TINY
    estimate, vector = top_eigenpair(h)
    upper = round_up(math.sqrt(certify_top(h, estimate, error))) * 2.0**exponent
    right = k.T @ vector if wide else vector  # a left singular vector mapped to the input side
    norm = float(torch.linalg.vector_norm(right))
    lower = float(torch.linalg.vector_norm(k @ right)) / norm * 2.0**exponent if norm > 0 else 0.0
    return upper, min(lower, upper), right
