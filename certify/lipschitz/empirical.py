"""A lower bound on the network's Lipschitz constant: the largest Jacobian norm found.

Any point x gives ``L >= ||J(x)||`` (for the L2 operator norm, ``||J(x) v|| / ||v||`` for an explicit v). We take
the largest value over the dataset points and over points reached by ascent on ``||J(x)||`` from the best of
them. The upper bound divided by this value is the honest size of the remaining uncertainty.

Samples always run at batch 1, one at a time, so graphs exported with a fixed batch of 1 (reshapes to ``[1, -1]``)
are evaluated correctly. Derivatives use plain reverse-mode autograd of scalars, not ``torch.func``, forward-mode
AD or ``grad_outputs``, whose first use imports torch's compiler stack or sympy: seconds of fixed cost for a command
on a small network.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

#: Full Jacobians (rows by reverse mode) are computed for outputs up to this size; above it, power iteration.
FULL_JACOBIAN_MAX_OUTPUTS = 64


def sample_function(graph) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x (per-sample shape) -> flattened output`` running the graph at batch 1."""

    def f(x: torch.Tensor) -> torch.Tensor:
        out = graph(x.unsqueeze(0))
        return out.reshape(-1)

    return f


def per_sample(fn: Callable, xs: torch.Tensor) -> torch.Tensor:
    """``fn`` applied to every sample of ``xs``, one by one, stacked."""
    return torch.stack([fn(x) for x in xs])


def outputs(graph, xs: torch.Tensor) -> torch.Tensor:
    """Graph outputs (flattened per sample) for a batch of inputs, each sample run at batch 1."""
    with torch.no_grad():
        return per_sample(sample_function(graph), xs)


def jacobian(f, x: torch.Tensor) -> torch.Tensor:
    """The exact Jacobian ``[outputs, *x.shape]`` of ``f`` at ``x``: one forward pass and one backward pass per
    output row (the graph is kept between them)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = f(x)
        rows = []
        for i in range(out.numel()):
            (row,) = torch.autograd.grad(out[i], x, retain_graph=i + 1 < out.numel(), allow_unused=True)
            rows.append(torch.zeros_like(x) if row is None else row)
    return torch.stack(rows) if rows else x.new_zeros((0, *x.shape))


def jvp(f, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``J(x) v`` by the double-backward identity ``J v = d/du <J^T u, v>`` (differentiable with respect to ``x``
    when ``x`` requires grad). Forward-mode AD would be one pass cheaper, but its first use on an operation mixing
    a dual and a plain tensor imports torch's compiler stack."""
    with torch.enable_grad():
        z = x if x.requires_grad else x.detach().requires_grad_(True)
        out = f(z)
        u = torch.zeros_like(out, requires_grad=True)
        (g,) = torch.autograd.grad((out * u).sum(), z, create_graph=True, allow_unused=True)
        if g is None or not g.requires_grad:
            return torch.zeros_like(out)
        (jv,) = torch.autograd.grad((g * v).sum(), u, create_graph=x.requires_grad, allow_unused=True)
    return torch.zeros_like(out) if jv is None else jv


def vjp(f, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``J(x)^T u`` by reverse mode."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad((f(x) * u).sum(), x, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def _full_jacobians(f, xs: torch.Tensor) -> torch.Tensor:
    return torch.stack([jacobian(f, x) for x in xs])


def jacobian_norms(graph, xs: torch.Tensor, norm: str = "l2", iters: int = 30, seed: int = 0) -> np.ndarray:
    """``||J(x)||`` (L2 operator norm, or the L-inf one: max row sum) for every sample of ``xs``.

    Outputs up to ``FULL_JACOBIAN_MAX_OUTPUTS`` get the full Jacobian (exact norms); larger outputs use power
    iteration on ``J^T J`` (forward- and reverse-mode products), whose Rayleigh quotient is an achieved value.
    L-inf norms of large outputs are not computed (NaN).
    """
    f = sample_function(graph)
    xs = xs.detach()
    k = f(xs[0]).numel()
    if k <= FULL_JACOBIAN_MAX_OUTPUTS:
        jac = _full_jacobians(f, xs).detach().double().reshape(xs.shape[0], k, -1)
        if norm == "linf":
            return jac.abs().sum(dim=2).amax(dim=1).numpy()
        return torch.linalg.matrix_norm(jac, ord=2).numpy()
    if norm == "linf":
        return np.full(xs.shape[0], np.nan)
    return np.array([_power_norm(f, x, iters, seed) for x in xs])


def _power_norm(f, x: torch.Tensor, iters: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    v = v / v.norm()
    value = 0.0
    for _ in range(iters):
        jv = jvp(f, x, v).detach()
        value = float(jv.norm())
        w = vjp(f, x, jv)
        if float(w.norm()) == 0.0:
            break
        v = w / w.norm()
    return value


def _norm_and_direction(f, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """``||J(x)||`` and its top right singular vector, from the full Jacobian."""
    jac = jacobian(f, x).reshape(-1, x.numel()).detach().double()
    if not bool(torch.isfinite(jac).all()):  # e.g. Sqrt at 0: no finite value to report from this point
        return -float("inf"), None
    _, singular, vh = torch.linalg.svd(jac, full_matrices=False)
    return float(singular[0]), vh[0].to(x.dtype).reshape(x.shape)


def _energy_gradient(f, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The gradient of ``z -> ||J(z) v||^2`` at ``x``, which points to larger Jacobian norms along v."""
    z = x.detach().requires_grad_(True)
    with torch.enable_grad():
        energy = jvp(f, z, v).pow(2).sum()
        if not energy.requires_grad:  # J does not depend on z here (an affine piece)
            return torch.zeros_like(x)
        (g,) = torch.autograd.grad(energy, z, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def ascend(graph, x0: torch.Tensor, steps: int = 20, step: float | None = None,
           seed: int = 0) -> tuple[float, torch.Tensor]:
    """Hill climbing on ``||J(x)||`` from ``x0`` (per-sample shape): a step along the gradient of
    ``||J(x) v||`` (v the top right singular vector) when it is non-zero, else a random direction (piecewise
    linear networks have a zero gradient almost everywhere); a step is kept only if the norm grows, otherwise the
    step size shrinks. Returns the best value and point. Outputs larger than ``FULL_JACOBIAN_MAX_OUTPUTS`` use
    random steps and power iteration only."""
    f = sample_function(graph)
    gen = torch.Generator().manual_seed(seed)
    x = x0.detach().clone()
    full = f(x).numel() <= FULL_JACOBIAN_MAX_OUTPUTS

    def evaluate(z):
        if full:
            return _norm_and_direction(f, z)
        return float(jacobian_norms(graph, z.unsqueeze(0), iters=10, seed=seed)[0]), None

    best, v = evaluate(x)
    size = step if step is not None else 0.1 * max(float(x.norm()), 1.0)
    for _ in range(steps):
        direction = None
        if v is not None:
            try:
                g = _energy_gradient(f, x, v)
                if float(g.norm()) > 1e-12:
                    direction = g / g.norm()
            except Exception:  # an operator without forward-mode derivatives: random steps only
                direction = None
        if direction is None:
            direction = torch.randn(x.shape, generator=gen, dtype=x.dtype)
            direction = direction / direction.norm()
        candidate = x + size * direction
        value, candidate_v = evaluate(candidate)
        if value > best:
            best, x, v = value, candidate, candidate_v
        else:
            size *= 0.6
    return best, x


def lower_bound(graph, xs: torch.Tensor, norm: str = "l2", ascent_starts: int = 2, ascent_steps: int = 10,
                seed: int = 0) -> dict:
    """The largest ``||J(x)||`` over ``xs`` and over ascent from the ``ascent_starts`` best of them.

    Large outputs (power iteration, a few forward and backward passes per iteration) are limited to 4 points,
    10 iterations and 3 ascent steps, so the lower bound of a big network stays a minor cost.
    """
    large = sample_function(graph)(xs[0]).numel() > FULL_JACOBIAN_MAX_OUTPUTS if xs.shape[0] else False
    if large:
        xs, ascent_steps = xs[:4], min(ascent_steps, 3)
    iters = 10 if large else 30
    norms = jacobian_norms(graph, xs, norm=norm, iters=iters, seed=seed)
    finite = np.where(np.isfinite(norms), norms, -np.inf)
    best = float(finite.max()) if finite.size else float("nan")
    source = "dataset"
    if norm == "l2" and ascent_steps > 0 and xs.shape[0]:
        for rank, index in enumerate(np.argsort(-finite)[:ascent_starts]):
            value, _ = ascend(graph, xs[int(index)], steps=ascent_steps, seed=seed + rank)
            if value > best:
                best, source = value, "gradient ascent"
    return {"lower": best if np.isfinite(best) else None, "points": int(xs.shape[0]), "found_by": source,
            "method": "max ||J(x)|| (full Jacobian or power iteration)"}
