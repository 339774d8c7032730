"""Certified block norms by one Gram product and a Cholesky factorisation: never below the largest singular value
of the batch, within the tolerance of it, with the Gram-iteration fallback for blocks the estimates miss."""

from __future__ import annotations

import pytest
import torch

from certify.lipschitz.cholesky import certified_block_norms


def _exact_max(blocks: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(blocks.to(torch.complex128), ord=2).max())


@pytest.mark.parametrize("shape, complex_", [((12, 40, 30), True), ((5, 20, 64), False), ((3, 1, 7), True)])
def test_upper_bounds_the_batch_maximum_tightly(shape, complex_):
    gen = torch.Generator().manual_seed(sum(shape))
    blocks = torch.randn(shape, generator=gen, dtype=torch.float64)
    if complex_:
        blocks = torch.complex(blocks, torch.randn(shape, generator=gen, dtype=torch.float64))
    upper, lower, _ = certified_block_norms(blocks)
    exact = _exact_max(blocks)
    assert exact <= float(upper.max()) <= exact * 1.0011
    assert float(lower.max()) <= exact * (1 + 1e-12)


def test_blocks_the_estimates_miss_fall_back_to_gram_iteration():
    # two nearly equal top singular values: no power step leaves the estimate far below the maximum
    u, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    sigma = torch.linspace(1.0, 0.1, 16, dtype=torch.float64)
    sigma[1] = 0.9999
    blocks = torch.stack([u @ torch.diag(sigma) @ u.T, 0.5 * torch.eye(16, dtype=torch.float64)])
    upper, _, _ = certified_block_norms(blocks, power_steps=0)
    assert 1.0 <= float(upper.max()) <= 1.0011


def test_zero_and_scaled_batches():
    zero = torch.zeros(3, 4, 5, dtype=torch.float64)
    assert float(certified_block_norms(zero)[0].max()) == 0.0
    tiny = torch.randn(4, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 1e-200
    assert _exact_max(tiny) <= float(certified_block_norms(tiny)[0].max()) <= _exact_max(tiny) * 1.0011


@pytest.mark.parametrize("shape", [(1, 300, 200), (2, 150, 400)])
def test_lanczos_estimates_certify_large_single_matrices(shape):
    # random matrices have a tiny gap at the top of the spectrum: power iteration alone would leave the estimate
    # far below the norm; the Lanczos estimate is certified in one Cholesky round
    blocks = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    upper, lower, _ = certified_block_norms(blocks, rel_tol=1e-4)
    exact = _exact_max(blocks)
    assert exact <= float(upper.max()) <= exact * (1 + 1.2e-4)
    assert exact * (1 - 1e-5) <= float(lower.max()) <= exact * (1 + 1e-12)


@pytest.mark.parametrize("shape", [(300, 520), (520, 300)])
def test_svd_top_of_large_matrices_is_certified_within_1e_7(shape):
    from certify.lipschitz.exact import svd_top

    matrix = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    upper, vector = svd_top(matrix)
    exact = float(torch.linalg.matrix_norm(matrix, ord=2))
    assert exact <= upper <= exact * (1 + 2e-7)
    assert vector.shape == (shape[1],)
    assert float(torch.linalg.vector_norm(matrix @ vector)) >= exact * (1 - 1e-6)
