"""Exact norms of operators small enough to write down: the matrix from the basis images, and its largest singular
value with a rigorous bound on LAPACK's float64 error."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from certify.lipschitz.cholesky import certified_block_norms
from certify.lipschitz.gram import U64, round_up

_SVD_MAX_SIDE = 256  # larger matrices: a Gram product, a Lanczos estimate and a Cholesky certificate, ~10x cheaper
_CERTIFIED_TOL = 1e-7


def svd_relative_error(rows: int, cols: int) -> float:
    """Relative error bound of the largest singular value computed by LAPACK in float64.

    A backward stable SVD returns the exact singular values of A + E with ||E||_2 <= p(m, n) u ||A||_2 for a modest
    polynomial p (Demmel, "Applied Numerical Linear Algebra", 5.4); Weyl's inequality turns that into the same bound
    on each singular value. We take p = 16 (m + n)^2, far above the usual O(max(m, n)) estimates.
    """
    return 16.0 * (rows + cols) ** 2 * U64


def materialize(fn: Callable[[torch.Tensor], torch.Tensor], input_shape: Sequence[int]) -> torch.Tensor:
    """The linear map as a float64 matrix (out, in), from its action on the identity basis."""
    size = math.prod(input_shape)
    with torch.no_grad():
        columns = fn(torch.eye(size, dtype=torch.float64).reshape(size, *input_shape))
    return columns.reshape(size, -1).T


def svd_top(matrix: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Guaranteed upper bound of ||matrix||_2 (within 1e-7 of it) and its top right singular vector."""
    if min(matrix.shape) > _SVD_MAX_SIDE:
        upper, _, vectors = certified_block_norms(matrix.unsqueeze(0), rel_tol=_CERTIFIED_TOL)
        v = vectors[0].to(matrix.dtype)
        v = v if v.shape[0] == matrix.shape[1] else matrix.T @ v  # the left vector of a wide matrix
        return float(upper[0]), v / torch.linalg.vector_norm(v).clamp_min(1e-300)
    _, sv, vh = torch.linalg.svd(matrix, full_matrices=False)
    return round_up(float(sv[0]) / (1.0 - svd_relative_error(*matrix.shape))), vh[0]
