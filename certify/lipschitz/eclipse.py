"""ECLipsE-Fast chains: alternations of fused linear segments and slope-restricted activations bounded jointly
(Xu & Sivaranjani, NeurIPS 2024), which is far tighter than the product of the layers' norms."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from certify.lipschitz import constants
from certify.lipschitz.gram import U64, matmul_gamma
from certify.lipschitz.gram_top import certified_norm, top_eigenpair
from certify.lipschitz.rules import Activation
from certify.lipschitz.segments import NodeRecord, Segment

#: Safety shift of every X_i, relative to lambda_i (X_i's eigenvalues lie in [lambda_i, 2 lambda_i]): it covers the
#: float64 rounding of forming X_i and of its Cholesky factor, a few n*u*lambda_i for n up to 10^5.
ECLIPSE_SHIFT = 1e-9


#: Relative margin on the final spectral norm (a triangular solve with a factor of condition number <= sqrt 2).
ECLIPSE_MARGIN = 1e-8
#: Largest layer matrix ECLipsE-Fast takes (its Gram products and factorisations grow with the cube of the width):
#: AlexNet's 9216 x 4096 first dense layer, not VGG's 25088 x 4096.
ECLIPSE_MAX_ENTRIES = 1 << 26


def eclipse_fast(matrices: list[torch.Tensor]) -> tuple[float | None, torch.Tensor | None]:
    """ECLipsE-Fast (Xu & Sivaranjani, NeurIPS 2024) for ``x -> W_l s(W_{l-1} ... s(W_1 x))`` with every
    activation slope-restricted in [0, 1] (wider slopes [0, b] are folded into the next matrix by the caller).

    Guarantee (a sequential S-procedure): with ``X_0 = I``, ``lambda_i = 1 / ||W_i X_{i-1}^-1 W_i^T||`` and
    ``X_i = 2 lambda_i I - lambda_i^2 W_i X_{i-1}^-1 W_i^T`` (positive definite, eigenvalues in
    [lambda_i, 2 lambda_i]), the slope condition ``u_j (v_j - u_j) >= 0`` for ``u = dz_i``, ``v = W_i dz_{i-1}`` gives
    ``dz_{i-1}^T X_{i-1} dz_{i-1} >= dz_i^T X_i dz_i`` (minimise over dz_{i-1}), hence
    ``||df||^2 <= ||W_l X_{l-1}^-1/2||^2 ||dx||^2``. This is the same value as eclipse-nn's ECLipsE_Fast
    (its ``alpha=0, beta=1`` parametrisation). Each X_i is shifted down by ``ECLIPSE_SHIFT * lambda_i`` (a smaller
    X_i keeps the inequality) so float64 rounding cannot break it; the final norm gets ``ECLIPSE_MARGIN``.

    Returns ``(upper, B)`` with ``B = W_l L^-T`` (X_{l-1} = L L^T): any row combination ``c^T W_l`` has the bound
    ``||c^T B||``, used for the class-pair bounds. ``(None, None)`` if a factorisation fails.
    """
    factor = None
    for w in matrices[:-1]:
        b = w if factor is None else torch.linalg.solve_triangular(factor, w.T, upper=False).T
        gram = b @ b.T
        top = top_eigenpair(gram)[0]
        if not top > 0:
            return None, None
        lam = 1.0 / top
        x = gram.mul_(-lam * lam)
        x.diagonal().add_(2.0 * lam - ECLIPSE_SHIFT * lam)
        factor, info = torch.linalg.cholesky_ex(x)
        if int(info) != 0:
            return None, None
    w = matrices[-1]
    final = w if factor is None else torch.linalg.solve_triangular(factor, w.T, upper=False).T
    return constants.round_up(certified_norm(final)[0], ECLIPSE_MARGIN), final


def pair_norms(final: torch.Tensor) -> np.ndarray:
    """``||B_y - B_j||`` for every pair of output rows, with the ECLipsE margin, from the Gram matrix ``G = B B^T``:
    ``g_yy + g_jj - 2 g_yj`` plus its rounding, ``|fl(g_yj) - g_yj| <= gamma_n ||b_y|| ||b_j||`` (Higham 3.5) on
    each term and a few u for the sums, at most ``(gamma_n + 4u) (||b_y|| + ||b_j||)^2`` with the norms rounded up
    (a thousand classes of a 4096-wide layer: one product instead of 4 * 10^9 differences)."""
    rows = final.to(torch.float64)
    gram = rows @ rows.T
    diag = gram.diagonal().clone()
    norms = torch.linalg.vector_norm(rows, dim=1) * (1.0 + 4.0 * U64)  # rounded up
    squared = diag[:, None] + diag[None, :] - 2.0 * gram
    slack = (matmul_gamma(rows.shape[1]) + 4.0 * U64) * (norms[:, None] + norms[None, :]) ** 2
    out = torch.sqrt((squared + slack * (1.0 + 4.0 * U64)).clamp_min(0.0)) * (1 + ECLIPSE_MARGIN)
    out.fill_diagonal_(0.0)
    return out.numpy()


@dataclass
class Chain:
    """Alternating fused linear segments and slope-restricted activations, bounded by ECLipsE-Fast."""

    items: list  # Segment | NodeRecord (activation)
    upper: float | None = None
    pairs: np.ndarray | None = None  # L of f_y - f_j when the chain ends in a linear segment with class outputs
    ms: float = 0.0
    method: str = "ECLipsE-Fast"

    @property
    def input(self) -> str:
        return self.items[0].input

    @property
    def output(self) -> str:
        last = self.items[-1]
        return last.output if isinstance(last, Segment) else last.outputs[0]


def _is_activation(record: NodeRecord) -> bool:
    return isinstance(record.rule, Activation) and record.rule.slope is not None and record.bound.upper is not None


def find_chains(records, segments, consumers, graph_outputs) -> list[Chain]:
    """Maximal alternations segment, activation, segment, ... where each link feeds only the next."""
    items: dict[str, object] = {}
    for segment in segments:
        if segment.matrix is not None and segment.bound is not None and segment.matrix.numel() <= ECLIPSE_MAX_ENTRIES:
            items[segment.input] = segment
    for record in records:
        if _is_activation(record) and len(record.varying) == 1 and record.rule.slope.lo >= 0:
            items.setdefault(record.varying[0], record)
    chains: list[Chain] = []
    used: set[int] = set()
    for segment in segments:
        if id(segment) in used or segment.input not in items or items[segment.input] is not segment:
            continue
        chain = [segment]
        used.add(id(segment))
        while True:
            tail = chain[-1].output if isinstance(chain[-1], Segment) else chain[-1].outputs[0]
            nxt = items.get(tail)
            if nxt is None or consumers.get(tail, 0) != 1 or tail in graph_outputs:
                break
            if isinstance(nxt, Segment) == isinstance(chain[-1], Segment):
                break
            chain.append(nxt)
            used.add(id(nxt))
        if sum(isinstance(i, Segment) for i in chain) >= 2:
            chains.append(Chain(chain))
    return chains


def bound_chain(chain: Chain, output_name: str) -> None:
    started = time.perf_counter()
    matrices, slope = [], 1.0
    for item in chain.items:
        if isinstance(item, Segment):
            matrices.append(item.matrix * slope)
            slope = 1.0
        else:
            slope = item.rule.slope.hi
    trailing = slope  # an activation after the last linear segment
    upper, final = eclipse_fast(matrices)
    chain.upper = None if upper is None else upper * trailing
    if upper is not None and chain.output == output_name and isinstance(chain.items[-1], Segment):
        chain.pairs = pair_norms(final)
    chain.ms = (time.perf_counter() - started) * 1e3
