"""A lower bound on the network's Lipschitz constant: the largest Jacobian norm found.

Any point x gives ``L >= ||J(x)||`` (for the L2 operator norm, ``||J(x) v|| / ||v||`` for an explicit v), and any
pair ``L >= ||f(x) - f(y)|| / ||x - y||``. We take the largest value over the dataset points and over pairs reached
by gradient ascent on a short secant (a finite-difference ``||J(x) v||``, whose gradient in x does not vanish on
piecewise-linear networks, where ``J`` is locally constant) from many dataset and random starts. The upper bound
divided by this value is the honest size of the remaining uncertainty.

Samples always run at batch 1, one at a time, so graphs exported with a fixed batch of 1 (reshapes to ``[1, -1]``)
are evaluated correctly. Derivatives use plain reverse-mode autograd of scalars, not ``torch.func``, forward-mode
AD or ``grad_outputs``, whose first use imports torch's compiler stack or sympy: seconds of fixed cost for a command
on a small network.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

#: Secant length relative to the start's norm; how far random starts reach beyond the data's box; the relative
#: forward error of a float32 evaluation subtracted from every difference (a secant cannot win on rounding noise).
SECANT = 1e-2
WIDEN = (1.0, 10.0, 100.0)
ROUNDING = 1e-6
MIN_SECANT = 1e-3  # the shortest secant, relative to the point's norm
POWER_STEPS = 6
ASCENT_STEPS_FIT = 8  # ascent steps the number of starts leaves time for (`_starts_that_fit`)
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


def jacobian_norms(graph, xs: torch.Tensor, norm: str = "l2", iters: int = 30, seed: int = 0,
                   deadline: float | None = None) -> np.ndarray:
    """``||J(x)||`` (L2 operator norm, or the L-inf one: max row sum) for every sample of ``xs``.

    Outputs up to ``FULL_JACOBIAN_MAX_OUTPUTS`` get the full Jacobian (exact norms); larger outputs use power
    iteration on ``J^T J`` (forward- and reverse-mode products), whose Rayleigh quotient is an achieved value, until
    ``deadline`` (``time.monotonic()``; the first point gets one step whatever the time, later points NaN).
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
    clock = Clock(deadline)
    return np.array([_power_norm(f, x, iters, seed, clock) if i == 0 or clock.allows_another() else np.nan
                     for i, x in enumerate(xs)])


class Clock:
    """Ends a loop of similar steps before the step that would finish after the deadline (``time.monotonic()``;
    None: never), each step assumed to take as long as the last one: a budget is kept, not overrun by a step."""

    def __init__(self, deadline: float | None):
        self.deadline, self.mark, self.last = deadline, time.monotonic(), 0.0

    def allows_another(self) -> bool:
        now = time.monotonic()
        self.last, self.mark = now - self.mark, now
        return self.deadline is None or now + self.last <= self.deadline


def _power_norm(f, x: torch.Tensor, iters: int, seed: int, clock: Clock) -> float:
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    v = v / v.norm()
    value = 0.0
    for _ in range(iters):
        jv = jvp(f, x, v).detach()
        value = max(value, float(jv.norm()))
        w = vjp(f, x, jv)
        if float(w.norm()) == 0.0 or not clock.allows_another():
            break
        v = w / w.norm()
    return value


def _aligned_directions(graph, at: torch.Tensor, length: torch.Tensor, steps: int, seed: int,
                        clock: Clock) -> torch.Tensor:
    """Unit directions v after ``steps`` power-iteration steps on ``J^T J`` at the points ``at`` (x fixed), each from
    the gradient of the secant ``q = ||f(x + t v) - f(x)|| / t`` in v: ``v + grad_v / q`` is ``J^T J v / q^2``."""
    count = at.shape[0]
    shape = (-1, *([1] * (at.dim() - 1)))
    v = _unit_rows(torch.randn(at.shape, generator=torch.Generator().manual_seed(seed), dtype=at.dtype))
    with torch.no_grad():
        base = graph(at).reshape(count, -1)
    for step in range(steps):
        if step and not clock.allows_another():
            break
        v.requires_grad_(True)
        with torch.enable_grad():
            ratios = (graph(at + length * v).reshape(count, -1) - base).norm(dim=1) / length.view(-1)
            if not ratios.requires_grad:
                break
            (grad,) = torch.autograd.grad(ratios.sum(), v)
        v = _unit_rows(v.detach() + torch.nan_to_num(grad) / ratios.detach().clamp_min(1e-30).view(shape))
    return v


def secant_ascent(graph, starts: torch.Tensor, steps: int = 100, seed: int = 0, deadline: float | None = None,
                  rate: float = 0.2) -> float:
    """The largest secant ``||f(x + d) - f(x)|| / ||d||`` seen while ascending it by Adam over ``x`` and ``d``
    from every start at once (one batch). A short secant is a finite-difference ``||J(x) d|| / ||d||``: the ascent
    in d is a power iteration on ``J^T J`` and, unlike ``||J(x)||`` itself, the secant has a gradient in x where f is
    piecewise linear (J locally constant). Every value is achieved by an explicit pair, so the maximum is a lower
    bound of the global Lipschitz constant (up to the rounding of the two evaluations). Coordinates are scaled by
    each start's root-mean-square entry, so the rate is relative. d starts from ``POWER_STEPS`` power-iteration
    steps (`_aligned_directions`), so the ascent begins near ``||J(x)||`` rather than a random direction's slope."""
    count = starts.shape[0]
    flat = starts.detach().reshape(count, -1)
    rms = (flat.norm(dim=1) / flat.shape[1] ** 0.5).clamp_min(1e-3).view(-1, *([1] * (starts.dim() - 1)))
    x = (starts.detach() / rms).requires_grad_(True)
    clock = Clock(deadline)
    start_d = _aligned_directions(graph, starts.detach(), SECANT * rms * flat.shape[1] ** 0.5, POWER_STEPS, seed,
                                  clock)
    d = (SECANT * flat.shape[1] ** 0.5 * start_d).requires_grad_(True)  # in units of rms: length SECANT ||x||
    optimiser = _Adam([x, d], rate)
    best = -float("inf")
    for step in range(steps + 1):
        with torch.enable_grad():
            at, move = x * rms, d * rms
            length = move.reshape(count, -1).norm(dim=1)
            floor = MIN_SECANT * at.detach().reshape(count, -1).norm(dim=1).clamp_min(1e-3)
            move = move * (floor / length).clamp_min(1.0).view_as(rms)  # never shorter than the floor
            ends = graph(at + move).reshape(count, -1), graph(at).reshape(count, -1)
            noise = ROUNDING * (ends[0].norm(dim=1) + ends[1].norm(dim=1))
            ratios = ((ends[0] - ends[1]).norm(dim=1) - noise) / move.reshape(count, -1).norm(dim=1)
        seen = ratios.detach()[torch.isfinite(ratios.detach())]
        best = max(best, float(seen.max())) if seen.numel() else best
        if step == steps or not ratios.requires_grad or not clock.allows_another():
            break
        with torch.enable_grad():
            grads = torch.autograd.grad(-torch.nan_to_num(ratios, nan=0.0, posinf=0.0, neginf=0.0).sum(), [x, d])
        optimiser.step(grads)
    return best


class _Adam:
    """Adam (Kingma and Ba, ICLR 2015) with torch.optim's defaults, in place on leaf tensors: torch.optim's first use
    imports its compiler stack, seconds of fixed cost for one ascent."""

    def __init__(self, params: list[torch.Tensor], rate: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.rate, self.betas, self.eps, self.t = params, rate, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def step(self, grads) -> None:
        self.t += 1
        b1, b2 = self.betas
        with torch.no_grad():
            for p, g, m, v in zip(self.params, grads, self.m, self.v):
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v / (1 - b2**self.t)).sqrt_().add_(self.eps)
                p.addcdiv_(m, denom, value=-self.rate / (1 - b1**self.t))


def _unit_rows(v: torch.Tensor) -> torch.Tensor:
    """Every sample of the batch scaled to unit norm (zero samples stay zero)."""
    norms = v.reshape(v.shape[0], -1).norm(dim=1).clamp_min(1e-30)
    return (v / norms.view(-1, *([1] * (v.dim() - 1)))).detach()


def _random_starts(xs: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Points drawn uniformly in the box spanned by the given points (the data's range) and in that box widened
    10 and 100 times about its centre, in turn: the constant is global, its largest slopes need not lie near data."""
    gen = torch.Generator().manual_seed(seed + 7919)
    lo, hi = xs.amin(dim=0), xs.amax(dim=0)
    half = ((hi - lo) / 2).clamp_min(float(xs.abs().max()) * 1e-3 + 1e-3)
    widen = torch.tensor([WIDEN[i % len(WIDEN)] for i in range(count)], dtype=xs.dtype)
    unit = 2 * torch.rand((count, *lo.shape), generator=gen, dtype=xs.dtype) - 1
    return (lo + hi) / 2 + unit * half * widen.view(-1, *([1] * lo.dim()))


def _starts_that_fit(remaining_s: float, pass_s: float) -> int:
    """How many ascent starts (one batch) leave time for ``ASCENT_STEPS_FIT`` steps, a step costing about four
    forward passes per start (two forward, one backward): a large network ascends from its best points only,
    rather than spending the budget on the first step of many."""
    return max(1, int(remaining_s / (ASCENT_STEPS_FIT * 4 * max(pass_s, 1e-9))))


def lower_bound(graph, xs: torch.Tensor, norm: str = "l2", ascent_starts: int = 8, ascent_steps: int = 100,
                seed: int = 0, random_starts: int = 8, budget_s: float = 60.0) -> dict:
    """The largest ``||J(x)||`` over ``xs``, then (L2) :func:`secant_ascent` from the ``ascent_starts`` best of
    them and ``random_starts`` points drawn in the data's range: an estimate of the true constant from below
    (every value is achieved by explicit points). Large outputs (power iteration, a few forward and backward passes
    per iteration) are screened at 4 dataset points within a third of the budget; the whole stays within
    ``budget_s`` seconds (steps are not started that would end after it; a large network ascends from fewer starts,
    `_starts_that_fit`). The result carries the seconds it took (``seconds``) and the budget, so a whole-model time
    can report it apart."""
    started = time.monotonic()
    deadline = started + budget_s
    with torch.no_grad():
        large = sample_function(graph)(xs[0]).numel() > FULL_JACOBIAN_MAX_OUTPUTS if xs.shape[0] else False
    pass_s = time.monotonic() - started  # one forward pass at batch 1 (with any first-call overhead)
    screened = xs[:4] if large else xs
    norms = jacobian_norms(graph, screened, norm=norm, iters=10 if large else 30, seed=seed,
                           deadline=started + budget_s / 3)
    finite = np.where(np.isfinite(norms), norms, -np.inf)
    best = float(finite.max()) if finite.size else float("nan")
    source, starts = "dataset", 0
    if norm == "l2" and ascent_steps > 0 and xs.shape[0] and time.monotonic() < deadline:
        fit = _starts_that_fit(deadline - time.monotonic(), pass_s)
        chosen = screened[torch.as_tensor(np.argsort(-finite)[:min(ascent_starts, fit)].copy())]
        randoms = min(random_starts, fit - chosen.shape[0])
        points = torch.cat([chosen, _random_starts(xs, randoms, seed)]) if randoms > 0 else chosen
        starts = int(points.shape[0])
        value = secant_ascent(graph, points, steps=ascent_steps, seed=seed, deadline=deadline)
        if value > best:
            best, source = value, "secant ascent"
    return {"lower": best if np.isfinite(best) else None, "points": int(screened.shape[0]), "ascent_starts": starts,
            "found_by": source, "method": "max ||J(x)|| (full Jacobian or power iteration) and secants "
            "||f(x + d) - f(x)|| / ||d|| from gradient ascent: an estimate from below",
            "seconds": round(time.monotonic() - started, 3), "budget_s": float(budget_s)}
