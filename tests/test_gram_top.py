"""The Cholesky-certified spectral norm of explicit matrices: never below the exact norm (SVD), within 1e-8 of it,
for shapes on both sides of the Lanczos threshold, extreme scales and repeated top singular values."""

from __future__ import annotations

import pytest
import torch

from certify.lipschitz import gram_top
from certify.lipschitz.eclipse import eclipse_fast
from certify.lipschitz.linear_norms import dense_bound


def _exact(matrix: torch.Tensor) -> float:
    return float(torch.linalg.svdvals(matrix)[0])


@pytest.mark.parametrize("shape", [(1, 1), (3, 200), (200, 3), (70, 65), (150, 300), (400, 400)])
@pytest.mark.parametrize("scale", [1e-200, 1.0, 1e150])
def test_upper_bounds_the_exact_norm_within_1e8(shape, scale):
    matrix = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(sum(shape))) * scale
    upper, lower, vector = gram_top.certified_norm(matrix)
    exact = _exact(matrix)
    assert exact < upper <= exact * (1 + 1e-8)
    assert exact * (1 - 1e-9) <= lower <= upper
    assert vector.shape == (shape[1],)


def test_structured_matrices():
    # exactly representable norms still get a strict margin; a repeated top singular value; rank one; zero
    assert 3.0 < gram_top.certified_norm(3 * torch.eye(100, dtype=torch.float64))[0] <= 3.0 * (1 + 1e-8)
    q, _ = torch.linalg.qr(torch.randn(120, 120, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))
    sigma = torch.linspace(2.0, 0.1, 120, dtype=torch.float64)
    sigma[1] = 2.0
    upper, lower, _ = gram_top.certified_norm(q @ torch.diag(sigma) @ q.T)
    assert 2.0 < upper <= 2.0 * (1 + 1e-8) and lower == pytest.approx(2.0, rel=1e-9)
    ones = torch.ones(90, 130, dtype=torch.float64)
    assert _exact(ones) < gram_top.certified_norm(ones)[0] <= _exact(ones) * (1 + 1e-8)
    assert gram_top.certified_norm(torch.zeros(80, 90, dtype=torch.float64))[:2] == (0.0, 0.0)


def test_a_low_estimate_falls_back_to_a_sound_bound():
    # an estimate far below the top eigenvalue: every Cholesky trial fails, the Frobenius norm of H stands
    matrix = torch.randn(50, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    h = matrix.T @ matrix
    exact = float(torch.linalg.eigvalsh(h)[-1])
    assert gram_top.certify_top(h.clone(), 0.5 * exact, 0.0) >= exact
    assert gram_top.certify_top(h.clone(), exact, 0.0) <= exact * (1 + 1e-8)


def test_dense_bound_and_eclipse_use_it_above_the_svd_size():
    weight = torch.randn(300, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    bound = dense_bound(weight)
    assert bound.method == "gram+cholesky-certificate" and bound.exact
    assert _exact(weight) < bound.upper <= _exact(weight) * (1 + 1e-8)
    # a one-layer "chain" is the layer's norm with the ECLipsE margin
    upper, _ = eclipse_fast([weight])
    assert _exact(weight) < upper <= _exact(weight) * (1 + 3e-8)


@pytest.mark.parametrize("layout", ["rows", "transposed", "strided", "empty"])
def test_gram_is_the_symmetric_product_in_any_layout(layout):
    base = torch.randn(90, 70, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    a = {"rows": base, "transposed": base.T, "strided": base[::2, 1::3], "empty": base[:0]}[layout]
    h = gram_top.gram(a)
    assert torch.equal(h, h.T)
    assert torch.allclose(h, a.T @ a, rtol=1e-13, atol=1e-12)
