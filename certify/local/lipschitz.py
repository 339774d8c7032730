"""Local layerwise Lipschitz bounds: the global layer bounds, restricted to what the input region lets happen.

Inside the region the bounds of each pre-activation fix part of the activation pattern: a Relu stably off has
slope 0 there, stably on slope 1, an unstable one a slope in [0, 1] (in general, each activation's largest slope
``d`` over its box). So the Jacobian of a dense layer followed by its activation is ``D W`` with ``|D| <= diag(d)``
and ``||D W|| <= ||diag(d) W||`` (operator norm L2 -> L2, or L-inf -> L-inf: the largest absolute row sum); the
network's constant for the logit difference ``f_y - f_j`` is at most ``||w_y - w_j||_* prod_k ||diag(d_k) W_k||``
(the last layer's row difference in the dual norm). The region is convex and contains the sample, so on it
``f_y(x') - f_j(x') >= m_yj(x) - L_yj ||x' - x||``: the sample is certified at eps when every margin exceeds
``L_yj eps``; the radius ``min(eps, min_j m_yj / L_yj)`` is claimed only up to eps, where the constant is valid.

Supported: chains of dense layers (Gemm, MatMul with a constant matrix), translations, reshapes and elementwise
activations. Norms are widened by a relative 1e-9 (SVD and row sums in float64 err far less).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from certify.local.bounds import Propagation
from certify.local.rules import Interval, Linear, UnsupportedOperator

RESHAPES = ("Flatten", "Reshape", "Identity", "Dropout", "Squeeze", "Unsqueeze", "Cast")
TRANSLATIONS = ("Add", "Sub")
WIDEN = 1 + 1e-9


@dataclass
class LayerBound:
    """One Table-5 row: a dense layer's global bound and its local bound over the region (mean, max over
    samples)."""

    node: str
    op_type: str
    global_upper: float
    local_mean: float
    local_max: float


@dataclass
class LocalLipschitz:
    """Per-layer rows and, per sample and class j, a bound on the local Lipschitz constant of ``f_y - f_j``.

    The last dense layer's row is its largest logit-difference row norm (globally, and for each sample's label);
    ``network`` is each sample's largest pair bound, ``global_network`` the product of the global rows.
    """

    norm: str
    layers: list[LayerBound]
    pair: torch.Tensor  # (N, K); 0 at j = y

    @property
    def network(self) -> torch.Tensor:
        return self.pair.amax(1)

    @property
    def global_network(self) -> float:
        product = 1.0
        for row in self.layers:
            product *= row.global_upper
        return product

    def radii(self, margins: torch.Tensor, eps: float) -> torch.Tensor:
        """``min(eps, min_j m_j / L_j)`` per sample (0 when some margin is <= 0); margins (N, K) with +inf at y."""
        ratio = torch.where(self.pair > 0, margins / self.pair, torch.where(margins > 0, torch.inf, -torch.inf))
        radius = ratio.amin(1).clamp(min=0.0)
        return torch.clamp(radius, max=eps)


def _operator_norm(m: torch.Tensor, norm: str) -> torch.Tensor:
    """Batched operator norm of (N, out, in) matrices: L2 spectral norm or L-inf largest absolute row sum."""
    if norm == "l2":
        return torch.linalg.matrix_norm(m, ord=2) * WIDEN
    return m.abs().sum(-1).amax(-1) * WIDEN


def _dual_row_norm(rows: torch.Tensor, norm: str) -> torch.Tensor:
    return (rows.norm(dim=-1) if norm == "l2" else rows.abs().sum(-1)) * WIDEN


def _dense_weight(op, args) -> torch.Tensor:
    """The (out, in) matrix of a dense node acting on its varying first operand."""
    if not isinstance(args[0], Interval) or isinstance(args[1], Interval) or args[0].lo.dim() != 2:
        raise UnsupportedOperator(op.onnx_name, op.op_type, "local Lipschitz needs a 2-D input times a constant")
    b = args[1]
    if op.op_type == "Gemm":
        if op.trans_a:
            raise UnsupportedOperator(op.onnx_name, op.op_type, "transA")
        b = b.T if op.trans_b else b
        return op.alpha * b.T
    if b.dim() != 2:
        raise UnsupportedOperator(op.onnx_name, op.op_type, "a constant operand that is not a matrix")
    return b.T


def _chain(prop: Propagation):
    """The varying steps as a chain ``[(kind, op, weight or slope), ...]``; raises when the graph is not one."""
    current = prop.input_name
    chain = []
    for _, op, inputs, outputs in prop._live_steps():
        vary = [n for n in inputs if n in prop.varying]
        if vary != [current]:
            raise UnsupportedOperator(op.onnx_name, op.op_type, "local Lipschitz bounds need a chain of layers")
        args = prop._args(inputs, prop.bounds)
        rule = op.relaxation
        if op.op_type in ("Gemm", "MatMul"):
            chain.append(("dense", op, _dense_weight(op, args)))
        elif rule.elementwise:
            chain.append(("slope", op, rule.slope_range(op, args).flatten(1)))
        elif not (op.op_type in RESHAPES or op.op_type in TRANSLATIONS and isinstance(rule, Linear)):
            raise UnsupportedOperator(op.onnx_name, op.op_type, "no local Lipschitz rule")
        current = outputs[0]
    if current != prop.output_name:
        raise UnsupportedOperator("(graph)", "outputs", "the chain does not end at the graph output")
    return chain


def local_lipschitz(prop: Propagation, labels: torch.Tensor, global_pairs=None) -> LocalLipschitz:
    """Local layerwise bounds over ``prop``'s region (its intermediate bounds give the activation pattern).

    ``global_pairs`` (optional, (K, K)): global bounds ``L[y, j]`` of ``f_y - f_j`` in the same norm (from
    ``certify.lipschitz.network.pair_bounds``); valid everywhere, so the smaller of the two is kept per pair.
    """
    norm = prop.region.norm
    chain = _chain(prop)
    n = prop.region.lower.shape[0]
    device = prop.region.lower.device
    product = torch.ones(n, dtype=torch.float64, device=device)
    layers: list[LayerBound] = []
    last_dense = max((i for i, (kind, _, _) in enumerate(chain) if kind == "dense"), default=None)
    final_rows = None
    for i, (kind, op, value) in enumerate(chain):
        if kind == "dense" and i == last_dense and all(k != "slope" for k, _, _ in chain[i + 1:]):
            final_rows = value  # (K, in): the logit rows, bounded pairwise below
            continue
        if kind == "dense":
            slope = chain[i + 1][2] if i + 1 < len(chain) and chain[i + 1][0] == "slope" else None
            matrix = value.expand(n, *value.shape) if slope is None else slope.unsqueeze(-1) * value
            local = _operator_norm(matrix, norm)
            global_upper = float(_operator_norm(value.unsqueeze(0), norm)[0])
            layers.append(LayerBound(op.onnx_name, op.op_type, global_upper, float(local.mean()), float(local.max())))
            product = product * local
        elif i == 0 or chain[i - 1][0] != "dense":
            product = product * value.amax(1) * WIDEN  # an activation not following a dense layer
    labels = labels.to(device)
    if final_rows is not None:
        rows = _dual_row_norm(final_rows[labels].unsqueeze(1) - final_rows.unsqueeze(0), norm)  # (N, K)
        pair = rows * product.unsqueeze(1)
        global_rows = _dual_row_norm(final_rows.unsqueeze(0) - final_rows.unsqueeze(1), norm).amax()
        last = chain[last_dense][1]
        layers.append(LayerBound(last.onnx_name, last.op_type, float(global_rows), float(rows.amax(1).mean()),
                                 float(rows.max())))
    else:
        k = prop.bounds[prop.output_name].lo.shape[1]
        pair = (2.0 if norm == "linf" else 2.0**0.5) * WIDEN * product.unsqueeze(1).expand(n, k).clone()
    if global_pairs is not None:
        known = torch.as_tensor(global_pairs, dtype=torch.float64, device=device)[labels]
        pair = torch.minimum(pair, torch.nan_to_num(known, nan=torch.inf))
    pair[torch.arange(n, device=device), labels] = 0.0
    return LocalLipschitz(norm, layers, pair)
