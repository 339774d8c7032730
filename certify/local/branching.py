"""Which neuron a subdomain of the Relu split search is split on next: filtered smart branching.

A cheap score ranks every unstable neuron of a subdomain (in the spirit of BaBSR, Bunel et al. 2020): the intercept
the upper relaxation line costs the bound, ``max(-lambda, 0) * (-u l / (u - l))`` for the backward coefficient
``lambda`` of the subdomain's open specification rows, plus a small tie-break ``|lambda| min(u, -l)``. The score
ignores how a split changes the coefficients that reach earlier layers, so the best ``top_k`` candidates are then
evaluated by an actual bound (filtered smart branching, De Palma et al. 2021): both children of each candidate are
bounded by one backward pass with the parent's optimised slopes and split multipliers (the split neuron's
relaxation becomes its exact piece, every other box is the parent's), and the candidate whose worse child is best
wins. The choice only steers the search; every subdomain is still closed by its own sound bound.

The filter is off by default (``TOP_K = 1``): one backward pass starts the new split's multiplier at 0, so it does
not see the split constraint that the children's beta optimisation then uses, and on MNIST and CIFAR nets of
VNN-COMP 2021 it left more subdomains open after the same number of bounded domains, at 1.5 times the time.
"""

from __future__ import annotations

import numpy as np
import torch

TOP_K = 1  # candidates per subdomain evaluated by a bound (1: the cheap score alone; see above)
CHILD_ELEMENTS = 2**23  # children x rows x widest tensor per evaluation chunk


def intercept_scores(prop, steps, record: dict, weight: torch.Tensor, open_: np.ndarray) -> torch.Tensor:
    """(n_open, neurons) cheap scores of the split tensors ``steps`` ((step index, name) pairs, flattened and
    concatenated in that order); -inf where a neuron is stable."""
    idx = torch.as_tensor(open_)
    scores = []
    for index, name in steps:
        op, inputs, _ = prop.steps[index]
        box = prop.bounds[name]
        coef = record.get(index)
        lo, hi = box.lo[idx], box.hi[idx]
        unstable = (lo < 0) & (hi > 0)
        if coef is None:
            scores.append(torch.where(unstable, 0.0, -torch.inf).flatten(1))
            continue
        _, bl, _, bu = op.relaxation.slopes(op, prop._args(inputs, prop.bounds))
        lam = (coef[:, idx] * weight.T[:, idx].reshape(-1, len(open_), *[1] * (coef.dim() - 2))).sum(0)
        score = lam.clamp(max=0).neg() * bu[idx] + lam.clamp(min=0) * bl[idx].neg()
        score = score + 1e-4 * lam.abs() * torch.minimum(hi, -lo)
        scores.append(torch.where(unstable, score, -torch.inf).flatten(1))
    return torch.cat(scores, dim=1)


def split_children(prop, names: list[str], parent: torch.Tensor, flat: torch.Tensor, sign: torch.Tensor):
    """Boxes and split signs of children: sample ``i`` is ``prop``'s sample ``parent[i]`` with neuron ``flat[i]``
    (flat index over ``names`` concatenated) split to ``sign[i]``; every box is the parent's, the split one
    clipped at 0."""
    bounds = {n: type(b)(b.lo[parent], b.hi[parent]) for n, b in prop.bounds.items()}
    splits, offset = {}, 0
    rows = torch.arange(len(parent))
    for name in names:
        shape = bounds[name].lo.shape
        size = shape[1:].numel()
        old = prop.splits.get(name)
        s = (old[parent] if old is not None else torch.zeros(shape, dtype=torch.float64)).flatten(1).clone()
        lo, hi = bounds[name].lo.flatten(1).clone(), bounds[name].hi.flatten(1).clone()
        local = flat - offset
        mine = (local >= 0) & (local < size)
        r, j, sg = rows[mine], local[mine], sign[mine].to(torch.float64)
        s[r, j] = sg
        lo[r, j] = torch.where(sg > 0, lo[r, j].clamp(min=0), lo[r, j])
        hi[r, j] = torch.where(sg < 0, hi[r, j].clamp(max=0), hi[r, j])
        splits[name] = s.reshape(shape)
        bounds[name] = type(bounds[name])(lo.reshape(shape), hi.reshape(shape))
        offset += size
    return bounds, splits


def children_lower(prop, names, parent, flat, sign, c: torch.Tensor, thetas: dict, betas: dict) -> torch.Tensor:
    """(S, m) sound lower bounds of the spec rows ``c`` (S, N, *output) on the children of :func:`split_children`,
    by one backward pass with the parents' slopes ``thetas`` and multipliers ``betas`` ((S, N, *shape) each)."""
    bounds, splits = split_children(prop, names, parent, flat, sign)
    child = prop.derived(parent, bounds, splits)
    cc = c[:, parent]
    th = {i: t[:, parent] for i, t in thetas.items()}
    be = {i: betas[i][:, parent] if i in betas else torch.zeros_like(th[i]) for i in thetas
          if prop.steps[i][1][0] in splits}
    with torch.no_grad():
        return child.linear_lower(prop.output_name, cc, th, be) - child._spec_rounding(cc)


def choose(prop, steps, record: dict, weight: np.ndarray, open_: np.ndarray, c: torch.Tensor, params: tuple,
           worst, top_k: int = TOP_K, depth: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per open subdomain the flat indices (n, ``depth``) of the neurons to split next, in order (-1 where fewer
    are unstable), and whether it has an unstable one. The first is the filtered choice; the later ones (for a
    search that splits a subdomain on several neurons at once) follow the cheap score.

    ``params``: the (thetas, betas) the subdomains' bounds ended with, (S, N, *shape) per step; ``worst(low)``
    maps (S, m) lower bounds to each child's bound gap that is furthest from done (+inf when closed)."""
    scores = intercept_scores(prop, steps, record, torch.as_tensor(weight), open_)
    first, has = _filtered(prop, steps, scores, open_, c, params, worst, top_k)
    if depth <= 1:
        return first[:, None], has
    rows = torch.arange(len(open_))
    scores[rows, first] = -torch.inf
    values, more = scores.topk(min(depth - 1, scores.shape[1]), dim=1)
    more = torch.where(torch.isfinite(values), more, -1)
    pad = torch.full((len(open_), depth - 1 - more.shape[1]), -1, dtype=more.dtype)
    return torch.cat([first[:, None], more, pad], dim=1), has


def _filtered(prop, steps, scores: torch.Tensor, open_: np.ndarray, c: torch.Tensor, params: tuple, worst,
              top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The neuron each subdomain is split on first: the best cheap score, or among the ``top_k`` best the one
    whose worse child's bound is best."""
    best, branch = scores.max(dim=1)
    has = torch.isfinite(best)
    k = min(top_k, scores.shape[1])
    if k <= 1 or not bool(has.any()):
        return branch, has
    values, cand = scores.topk(k, dim=1)
    names = [name for _, name in steps]
    widest = max(b.lo[0].numel() for b in prop.bounds.values())
    chunk = max(1, CHILD_ELEMENTS // (2 * k * c.shape[0] * widest))
    rank = np.full((len(open_), k), -np.inf)
    for start in range(0, len(open_), chunk):
        q = min(chunk, len(open_) - start)
        local = torch.arange(start, start + q).repeat(2 * k)
        parent = torch.as_tensor(open_)[local]
        flat = cand[local, torch.arange(k).repeat_interleave(q).repeat(2)]
        sign = torch.cat([torch.ones(k * q), -torch.ones(k * q)])
        low = children_lower(prop, names, parent, flat, sign, c, *params)
        gaps = np.asarray(worst(low)).reshape(2, k, q)
        rank[start:start + q] = np.minimum(gaps[0], gaps[1]).T
    rank = np.where(np.isfinite(values.numpy()), rank, -np.inf)
    pick = torch.as_tensor(rank.argmax(1))
    chosen = cand[torch.arange(len(open_)), pick]
    return torch.where(has, chosen, branch), has
