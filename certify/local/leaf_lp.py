"""Exact linear programs for branch-and-bound leaves, turned into guaranteed bounds through their duals.

A leaf is a subdomain in which every Relu-like unit is stable or split, so the network is affine on it. Its
relaxation then is the network: the backward pass of :class:`~certify.local.bounds.Propagation` gives each spec row
as ``f_k(x) >= a_k . x + b_k`` (equality when every relaxation is exact) and each split ``s_j z_j(x) >= 0`` as a
linear constraint ``g_j . x <= r_j`` that every input of the subdomain satisfies (from the lower bound of
``-s_j z_j``). The minimum of ``a_k . x`` over ``{x in box, G x <= r}`` is a linear program (HiGHS through
:func:`scipy.optimize.linprog`).

The LP solver's answer is not trusted. Its dual multipliers ``y >= 0`` give, for any ``y`` whatsoever, the bound
``min_box (a + G^T y) . x - y . r`` (weak duality: ``y . (G x - r) <= 0`` on the polytope), evaluated in float64
with an explicit error term for every sum (Higham's ``gamma_n``, doubled), after Neumaier and Shcherbina, "Safe bounds
in linear and mixed-integer linear programming", Math. Programming 99 (2004). The computed coefficients differ from
the exact ones by at most the propagation's rounding margin (``Propagation._rounding_of``), so the rows are
relaxed by it: the polytope only grows, the objective only drops. An LP the solver calls infeasible is proved
empty the same way, from the phase-one LP's multipliers (a positive bound on the total violation).

A leaf is closed when every disjunct has a row whose safe bound, less ``d`` and the float32 allowance, exceeds the
margin. The minimiser of every row that does not prove its disjunct is a candidate counterexample (exact for exact
relaxations); the caller confirms it in onnxruntime.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linprog

U = 2.0**-53


def _gamma(n: int) -> float:
    return 2 * n * U / (1 - n * U)  # doubled, as the propagation's own margin


def safe_minimum(a: np.ndarray, G: np.ndarray, r: np.ndarray, y: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 const: float = 0.0) -> float:
    """A guaranteed lower bound of ``min a . x + const`` over ``{lo <= x <= hi, G x <= r}`` from multipliers
    ``y`` (any; negative entries are dropped), float64 rounding included. -inf when not finite."""
    y = np.maximum(np.nan_to_num(y, nan=0.0, posinf=0.0), 0.0)
    m, n = G.shape
    g = a + G.T @ y
    reach = np.maximum(np.abs(lo), np.abs(hi))
    spread = np.abs(a) + np.abs(G).T @ y  # bounds |g - fl(g)| / gamma_{m+1}
    box, dual = np.minimum(g * lo, g * hi).sum(), y @ r
    value = box - dual + const
    error = (_gamma(m + 1) * spread @ reach + _gamma(n + 1) * np.abs(g) @ reach + _gamma(m + 1) * (y @ np.abs(r))
             + _gamma(4) * (abs(box) + abs(dual) + abs(const)))
    out = value - error
    return float(out) if np.isfinite(out) else -np.inf


class LeafProgram:
    """The linear relaxation of one leaf: input box, spec rows (S, n) + constants, split constraints ``G x <= r``."""

    def __init__(self, lo, hi, A, b, G, r):
        self.lo, self.hi, self.A, self.b, self.G, self.r = lo, hi, A, b, G, r

    def empty(self) -> bool:
        """Whether the constraints provably admit no input of the box (phase one: minimise the total violation)."""
        m, n = self.G.shape
        res = linprog(np.r_[np.zeros(n), np.ones(m)], A_ub=np.hstack([self.G, -np.eye(m)]), b_ub=self.r,
                      bounds=[*zip(self.lo, self.hi), *[(0, None)] * m], method="highs")
        if res.status != 0:
            return False
        y = np.minimum(-res.ineqlin.marginals, 1.0)  # y <= 1 keeps the slack terms out of the bound
        return safe_minimum(np.zeros(n), self.G, self.r, y, self.lo, self.hi) > 0

    def row(self, k: int) -> tuple[float, np.ndarray | None]:
        """A guaranteed lower bound of spec row k over the leaf (+inf when it is provably empty) and the LP's
        minimiser (None when the LP did not solve)."""
        res = linprog(self.A[k], A_ub=self.G if len(self.r) else None, b_ub=self.r if len(self.r) else None,
                      bounds=list(zip(self.lo, self.hi)), method="highs")
        if res.status == 2:
            return (np.inf if self.empty() else -np.inf), None
        if res.status != 0:
            return -np.inf, None
        y = -res.ineqlin.marginals if len(self.r) else np.zeros(0)
        return safe_minimum(self.A[k], self.G, self.r, y, self.lo, self.hi, self.b[k]), np.clip(res.x, self.lo, self.hi)


def programs(prop, names: list[str], leaves: np.ndarray, C: np.ndarray) -> list[LeafProgram]:
    """The :class:`LeafProgram` of each leaf (sample index of ``prop``) for spec rows ``C`` (S, *output)."""
    sub = prop.subset(torch.as_tensor(leaves))
    L = len(leaves)
    out_shape = sub.bounds[sub.output_name].lo.shape[1:]
    c = torch.as_tensor(C, dtype=torch.float64).reshape(len(C), 1, *out_shape).expand(len(C), L, *out_shape)
    with torch.no_grad():
        A, b = sub.backward(sub.output_name, c)
        b = b - sub._rounding_of(sub.output_name, c)  # f_k >= A x + b over the whole box, rounding included
        Gs, rs, keep = [], [], []
        for name in names:
            sign = sub.splits.get(name)
            if sign is None or not bool((sign != 0).any()):
                continue
            flat = sign.reshape(L, -1)
            units = (flat != 0).any(0).nonzero().flatten()
            a = torch.zeros((len(units), L, flat.shape[1]), dtype=torch.float64)
            a[torch.arange(len(units)), :, units] = -flat[:, units].T  # -s_j z_j >= g x + h, i.e. g x <= -h
            a = a.reshape(len(units), L, *sign.shape[1:])
            g, h = sub.backward(name, a)
            Gs.append(g.reshape(len(units), L, -1))
            rs.append(-h + sub._rounding_of(name, a))
            keep.append(flat[:, units].T != 0)
    lo, hi = sub.region.lower.reshape(L, -1).numpy(), sub.region.upper.reshape(L, -1).numpy()
    A = A.reshape(len(C), L, -1).numpy()
    b = np.nextafter(b.numpy(), -np.inf)  # the subtraction above rounded: one ulp outward covers it
    rs = [np.nextafter(h.numpy(), np.inf) for h in rs]
    found = []
    for i in range(L):
        if Gs:
            mask = torch.cat([k[:, i] for k in keep]).numpy()
            G = torch.cat([g[:, i] for g in Gs]).numpy()[mask]
            r = np.concatenate([h[:, i] for h in rs])[mask]
        else:
            G, r = np.zeros((0, lo.shape[1])), np.zeros(0)
        found.append(LeafProgram(lo[i], hi[i], A[:, i], b[:, i], G, r))
    return found


def close_leaves(prop, names: list[str], spec, margin: float, leaves: np.ndarray, candidate):
    """Per leaf whether its LPs prove every disjunct ((L,) bool), and a counterexample ``candidate`` confirmed
    among the minimisers of the rows that did not (or None)."""
    closed = np.zeros(len(leaves), dtype=bool)
    points = []
    for i, lp in enumerate(programs(prop, names, leaves, spec.C)):
        ok = True
        for rows in spec.groups:
            group_ok = False
            for k in rows:
                prop._tick()
                bound, x = lp.row(int(k))
                if bound - spec.d[k] - spec.error[k] > margin:
                    group_ok = True
                    break
                if x is not None:
                    points.append(x)
            ok &= group_ok
            if not ok:
                break
        closed[i] = ok
    found = candidate(np.stack(points)) if points else None
    return closed, found
