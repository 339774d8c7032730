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
_LANCZOS_STEPS = 96
_RESTARTS = 6
_CHECK_EVERY = 8  # Lanczos steps between checks of a run's error estimate
_TRIALS = (1e-9, 1e-7, 1e-5, 1e-3)  # relative headroom above the estimate, tried in turn


def top_eigenpair(h, *, tol: float = 1e-12, steps: int = _LANCZOS_STEPS, start: torch.Tensor | None = None,
                  accuracy: float = 0.0) -> tuple[float, torch.Tensor]:
    """An estimate of the largest eigenvalue of a Hermitian matrix and its eigenvector (on the matrix's device):
    dense for small matrices, else Lanczos with full reorthogonalisation (Golub and Van Loan, 10.1), restarted from
    its Ritz vector until the Ritz value moves by at most ``tol`` relative (``tol=math.inf``: one run). ``h`` may
    also be a function applying the matrix to a vector shaped like ``start``. A run ends early once its error
    estimate is below ``accuracy`` relative (0: full runs). Only an estimate: the certificate or an achieved ratio
    is what counts."""
    if isinstance(h, torch.Tensor):
        if h.shape[-1] <= _DENSE_EIGEN_MAX:
            values, vectors = torch.linalg.eigh(h)
            return float(values[-1]), vectors[:, -1]
        apply, n, like = h.__matmul__, h.shape[-1], h
    else:
        apply, n, like = h, start.numel(), start
    q = start if start is not None else torch.randn(n, generator=torch.Generator().manual_seed(0),
                                                    dtype=torch.float64).to(like)
    value = math.inf
    for _ in range(_RESTARTS):
        previous, (value, q, error) = value, _lanczos_run(apply, q, min(steps, n), accuracy)
        if abs(value - previous) <= tol * abs(value) or error <= tol * abs(value):
            break
    return value, q


def _lanczos_run(apply, q: torch.Tensor, steps: int, accuracy: float = 0.0) -> tuple[float, torch.Tensor, float]:
    """One Lanczos run of the matrix ``apply`` from q: the largest Ritz value, its unit Ritz vector and an estimate
    of the value's error, r^2 / gap (Kato-Temple: r the Ritz pair's residual, beta times the last entry of the top
    eigenvector of T; the gap to the next Ritz value stands in for the unknown gap to the next eigenvalue). Every
    ``_CHECK_EVERY`` steps the run ends once that estimate is below ``accuracy`` relative."""
    shape, q = q.shape, q.reshape(-1)
    basis = torch.zeros(steps, q.numel(), dtype=q.dtype, device=q.device)
    alphas, betas = [], []
    q = q / torch.linalg.vector_norm(q)
    for j in range(steps):
        basis[j] = q
        w = apply(q.reshape(shape)).reshape(-1)
        alphas.append(float(torch.vdot(q, w).real))
        for _ in range(2):  # twice is enough (Parlett)
            w = w - basis[:j + 1].T @ (basis[:j + 1].conj() @ w)
        beta = float(torch.linalg.vector_norm(w))
        if j + 1 == steps or beta <= 1e-12 * max(abs(a) for a in alphas):
            break
        if accuracy > 0 and j % _CHECK_EVERY == _CHECK_EVERY - 1:
            value, _, error = _ritz(alphas, betas, beta)
            if error <= accuracy * abs(value):
                break
        betas.append(beta)
        q = w / beta
    value, top, error = _ritz(alphas, betas, beta)
    ritz = top.to(basis) @ basis[:len(alphas)]
    return value, (ritz / torch.linalg.vector_norm(ritz)).reshape(shape), error


def _ritz(alphas: list, betas: list, beta: float) -> tuple[float, torch.Tensor, float]:
    """The top Ritz value of the tridiagonal matrix (alphas, betas), its eigenvector, and the error estimate with
    ``beta`` the next off-diagonal entry."""
    m = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(betas[:m - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    values, vecs = torch.linalg.eigh(t)
    gap = float(values[-1] - values[-2]) if m > 1 else math.inf
    error = (beta * float(vecs[-1, -1])) ** 2 / gap if gap > 0 else math.inf
    return float(values[-1]), vecs[:, -1], error


def cholesky_allowance(n: int, level, complex_: bool = False):
    """How far above ``level`` lambda_max(h) may lie when the floating-point Cholesky factorisation of
    fl(level I - h) (n x n, h_ii <= level) completes: Rump's backward error 8 gamma tr(A) <= 8 gamma n level
    (gamma of 2n + 2 roundings, doubled for complex arithmetic) plus the rounding of the diagonal, u (level + h_ii)
    <= 2 u level, doubled; every term rounded upward, with an absolute term for underflow."""
    nu = 2.0 * (2 * n + 2 if complex_ else n + 1) * U64
    return round_up(8.0 * nu / (1.0 - nu) * round_up(n * level) + 4.0 * U64 * level) + _TINY


def cholesky_passes(h: torch.Tensor, shift, index: torch.Tensor | None = None) -> torch.Tensor:
    """Whether the Cholesky factorisation of shift I - h completes, per matrix of a batch (..., n, n) (or of
    ``h[index]``); ``h`` is left as it was (one copy)."""
    a = h.clone() if index is None else h[index]
    a.neg_()
    shift = torch.as_tensor(shift, dtype=torch.float64, device=a.device)
    a.diagonal(dim1=-2, dim2=-1).add_(shift.unsqueeze(-1).to(a.dtype) if shift.ndim else shift.to(a.dtype))
    return torch.linalg.cholesky_ex(a)[1].eq(0) & (shift > 0)


def certify_top(h: torch.Tensor, estimate: float, error: float) -> float:
    """A guaranteed upper bound of ``lambda_max(G)`` for a PSD G with ``||h - G||_2 <= error`` (``h`` Hermitian,
    float64, nonnegative diagonal): the first trial ``s = estimate (1 + t)`` whose Cholesky certificate passes."""
    n = h.shape[0]
    if n == 0:
        return 0.0
    for headroom in _TRIALS:
        s = round_up(max(estimate, 0.0) * (1.0 + headroom)) + _TINY
        if bool(cholesky_passes(h, s)):
            return round_up(round_up(s + cholesky_allowance(n, s, h.is_complex())) + error) + _TINY
    return round_up(float(frobenius_upper(h.unsqueeze(0))[0]) + error)


def gram(a: torch.Tensor) -> torch.Tensor:
    """``a^T a`` for a float64 matrix ``a``: on a CPU one symmetric rank-k update (BLAS dsyrk, half the flops of a
    general product; every entry is the same inner product, so the same error bound), mirrored; elsewhere a product."""
    if a.device.type != "cpu" or a.dtype != torch.float64 or min(a.shape) == 0:
        return a.mT @ a
    from scipy.linalg.blas import dsyrk

    x = a.numpy()
    # dsyrk(trans=0) forms b b^T and trans=1 b^T b; pass the layout it reads without a copy (Fortran order)
    upper = dsyrk(1.0, x.T, trans=0) if x.T.flags.f_contiguous else dsyrk(1.0, np.asfortranarray(x), trans=1)
    upper = torch.from_numpy(upper).triu_()
    return upper + upper.triu(1).mT


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
    h = gram(oriented)
    error = round_up(matmul_gamma(oriented.shape[0]) * float(frobenius_upper(oriented.unsqueeze(0))[0]) ** 2) + _TINY
    estimate, vector = top_eigenpair(h, tol=0.1 * _TRIALS[0])  # close enough for the first trial to pass
    upper = round_up(math.sqrt(certify_top(h, estimate, error))) * 2.0**exponent
    right = k.T @ vector if wide else vector  # a left singular vector mapped to the input side
    norm = float(torch.linalg.vector_norm(right))
    lower = float(torch.linalg.vector_norm(k @ right)) / norm * 2.0**exponent if norm > 0 else 0.0
    return upper, min(lower, upper), right
