"""One local verdict per sample: which certification methods prove it robust at eps, cheapest first.

Methods, in the order they run: ``ibp`` (interval bounds), ``crown`` (backward linear bounds), ``local-lipschitz``
(margin over the local Lipschitz constant, from CROWN's activation pattern) and ``alpha-crown`` (slopes
optimised for every intermediate bound and for the specification, never looser than CROWN). A misclassified
sample is never certified and costs nothing; with ``skip_certified`` a sample already certified by a cheaper
method is not run through the dearer ones (its verdict cannot change), so per-method accuracies then count only
the samples each method saw; pass ``skip_certified=False`` for every method's own certified accuracy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from certify.convert import pad_batch
from certify.local.bounds import DEFAULT_MEMORY, Propagation, check_supported, float64_graph
from certify.local.float_error import forward_errors
from certify.local.lipschitz import LayerBound, local_lipschitz
from certify.local.region import NORMS, Region
from certify.local.rules import UnsupportedOperator

METHODS = ("ibp", "crown", "local-lipschitz", "alpha-crown")


@dataclass
class SampleVerdicts:
    """Per-sample results. Arrays have one entry per sample; ``lower[m]`` is method m's certified lower bound of
    the smallest logit margin ``min_{j != y} f_y - f_j`` over the region (NaN where m did not run), ``radius`` the
    local-Lipschitz certified radius (at most eps; NaN where it did not run)."""

    norm: str
    eps: float
    methods: tuple[str, ...]
    correct: np.ndarray
    certified: dict[str, np.ndarray]
    ran: dict[str, np.ndarray]
    lower: dict[str, np.ndarray]
    radius: np.ndarray
    seconds: dict[str, float]
    skipped: dict[str, str] = field(default_factory=dict)  # method -> why it could not run at all
    layers: list[LayerBound] = field(default_factory=list)

    @property
    def best(self) -> list[str | None]:
        """The first (cheapest) method that certified each sample, None where none did."""
        out = []
        for i in range(self.correct.shape[0]):
            out.append(next((m for m in self.methods if self.certified[m][i]), None))
        return out

    @property
    def any_certified(self) -> np.ndarray:
        return np.logical_or.reduce([self.certified[m] for m in self.methods]) if self.methods else self.correct & False

    def accuracy(self, method: str | None = None) -> float:
        """Certified accuracy of ``method`` (None: of the best method per sample) over all samples."""
        hits = self.any_certified if method is None else self.certified[method]
        return float(hits.mean()) if hits.size else 0.0

    def ms_per_sample(self, method: str) -> float:
        count = int(self.ran[method].sum())
        return 1000.0 * self.seconds[method] / count if count else 0.0

    def summary(self) -> dict:
        """Plain data for a report: per method its certified accuracy, samples run and ms per sample; the best
        sound accuracy; each sample's certifying method; why methods were skipped; the local layer rows."""
        return {
            "norm": self.norm, "eps": self.eps,
            "clean_accuracy": float(self.correct.mean()) if self.correct.size else 0.0,
            "methods": {m: {"accuracy": self.accuracy(m), "samples": int(self.ran[m].sum()),
                            "ms_per_sample": round(self.ms_per_sample(m), 3)} for m in self.methods},
            "best_accuracy": self.accuracy(), "best": self.best, "skipped": dict(self.skipped),
            "layers": [vars(row) for row in self.layers],
        }

    def per_sample(self) -> list[dict]:
        """``[{"correct", "best", "certified": {method: bool | None}, "lower": {method: float | None}}, ...]``
        (None: the method did not run on that sample)."""
        rows = []
        for i, best in enumerate(self.best):
            rows.append({
                "correct": bool(self.correct[i]),
                "best": best,
                "certified": {m: bool(self.certified[m][i]) if self.ran[m][i] else None for m in self.methods},
                "lower": {m: float(self.lower[m][i]) if self.ran[m][i] else None for m in self.methods},
            })
        return rows


def margin_spec(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Specification rows ``e_y - e_j`` for every class j (the row j = y is zero): (classes, N, classes)."""
    eye = torch.eye(classes, dtype=torch.float64, device=labels.device)
    return eye[labels].unsqueeze(0) - eye.unsqueeze(1)


def _smallest_margin(low: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(S=classes, N) lower bounds -> (N,) minimum over j != y."""
    low = low.clone()
    low[labels, torch.arange(labels.shape[0], device=labels.device)] = torch.inf
    return low.amin(0)


def certify_samples(module, x, y, eps: float, norm: str = "linf", input_range=(0.0, 1.0), methods=METHODS, *,
                    time_budget: float | None = None, device="cpu", margin=0.0, skip_certified: bool = True,
                    alpha_steps: int = 20, batch_size: int = 256, memory: int = DEFAULT_MEMORY,
                    global_pairs=None, float_error: bool = True) -> SampleVerdicts:
    """Certify each sample of ``x`` (labels ``y``) against every perturbation in its ``norm`` ball of radius
    ``eps`` intersected with ``input_range`` (None: unbounded), with each of ``methods``.

    ``module``: a converted graph (:class:`certify.convert.OnnxGraph`) with one input and logits as its first
    output. ``margin``: subtracted from every certified lower bound (the deployed float32 network's forward
    error), one number or one per sample. ``float_error``: also subtract, per sample and margin row,
    ``|C_k| . e`` with ``e`` the elementwise float32 forward error bound over the ball
    (:mod:`certify.local.float_error`; where an operator has no such rule only ``margin`` is subtracted).
    ``global_pairs``: the global certificate's ``L[y, j]`` (same norm), which the local Lipschitz bound never
    exceeds. ``time_budget`` (seconds): methods that would start after it are skipped. Raises
    :class:`~certify.local.rules.UnsupportedOperator` naming the node when the graph cannot be bounded at all.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown local methods {unknown}; choose from {METHODS}")
    order = tuple(m for m in METHODS if m in methods)
    graph = float64_graph(module, device)
    check_supported(graph)
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64, device=device)
    y = torch.as_tensor(np.asarray(y), dtype=torch.int64, device=device).reshape(-1)
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"{n} inputs but {y.shape[0]} labels")
    margin = np.broadcast_to(np.asarray(margin, dtype=np.float64), (n,))
    if not np.all(margin >= 0):
        raise ValueError("margin must be non-negative (it is an error bound)")
    whole = graph.reshapes_by_batch()  # a graph exported for a fixed batch: propagate exactly that many samples
    if whole:
        batch_size = graph.fixed_batch
    start = time.monotonic()
    result = SampleVerdicts(norm, float(eps), order, np.zeros(n, bool), {m: np.zeros(n, bool) for m in order},
                            {m: np.zeros(n, bool) for m in order}, {m: np.full(n, np.nan) for m in order},
                            np.full(n, np.nan), dict.fromkeys(order, 0.0))
    layer_rows: list[list[LayerBound]] = []
    for first in range(0, n, batch_size):
        batch = slice(first, min(n, first + batch_size))
        xb, yb, mb = (pad_batch(a[batch], batch_size) if whole else a[batch] for a in (x, y, margin))
        rows = _certify_batch(graph, xb, yb, eps, norm, input_range, order, result, batch, start, time_budget, mb,
                              skip_certified, alpha_steps, memory, global_pairs, float_error, whole)
        if rows:
            layer_rows.append(rows)
    result.layers = _merged_layers(layer_rows)
    return result


def _merged_layers(batches: list[list[LayerBound]]) -> list[LayerBound]:
    if not batches:
        return []
    merged = []
    for rows in zip(*batches):
        merged.append(LayerBound(rows[0].node, rows[0].op_type, rows[0].global_upper,
                                 float(np.mean([r.local_mean for r in rows])), max(r.local_max for r in rows)))
    return merged


def _certify_batch(graph, xb, yb, eps, norm, input_range, order, result: SampleVerdicts, batch: slice, start,
                   time_budget, margin, skip_certified, alpha_steps, memory, global_pairs,
                   float_error=True, whole=False) -> list[LayerBound]:
    """Certify the samples ``batch`` (``xb``, beyond them the padding of a fixed batch's last chunk). ``whole``:
    bound every sample of ``xb`` in each method (a graph exported for a fixed batch runs on no other count), and
    keep the results of those the method was for."""
    with torch.no_grad():
        logits = graph(xb).reshape(xb.shape[0], -1)
    correct = logits.argmax(1) == yb
    correct[batch.stop - batch.start:] = False  # the padding is nobody's sample
    result.correct[batch] = correct[:batch.stop - batch.start].cpu().numpy()
    spec = margin_spec(yb, logits.shape[1])
    region = Region.ball(xb, eps, norm, input_range)
    done = torch.zeros_like(correct)
    crown: tuple[torch.Tensor, Propagation] | None = None  # (sample indices, propagation)
    layers: list[LayerBound] = []
    for method in order:
        if time_budget is not None and time.monotonic() - start > time_budget:
            result.skipped.setdefault(method, "time budget spent")
            continue
        active = correct & ~done if skip_certified else correct
        index = active.nonzero().flatten()
        if index.numel() == 0:
            continue
        run = torch.arange(xb.shape[0], device=index.device) if whole else index  # the samples bounded
        began = time.monotonic()
        rounding = None  # the float error of the margin rows over ``used``, once per method and batch
        try:
            if method == "ibp":
                used = Propagation(graph, region.subset(run), "ibp", memory)
                low = used.lower(spec[:, run])
            else:
                if crown is None or not bool(torch.isin(run, crown[0]).all()):
                    crown = (run, Propagation(graph, region.subset(run), "crown", memory))
                where = torch.searchsorted(crown[0], run)
                prop = used = crown[1] if where.numel() == crown[0].numel() else crown[1].subset(where)
                if method == "crown":
                    low = prop.lower(spec[:, run])
                elif method == "alpha-crown":
                    tuned = Propagation(graph, region.subset(run), "crown", memory, alpha_steps=alpha_steps)
                    low = torch.maximum(tuned.lower(spec[:, run]), prop.lower(spec[:, run]))
                else:
                    rounding = _float_margin(prop, spec[:, run], result) if float_error else None
                    low, layers = _lipschitz_lower(prop, logits[run], yb[run], spec[:, run], eps, result, batch,
                                                   run, index, global_pairs, margin,
                                                   0.0 if rounding is None else rounding)
        except UnsupportedOperator as e:
            result.skipped.setdefault(method, e.message)
            continue
        finally:
            result.seconds[method] += time.monotonic() - began
        if float_error:
            low = low - (_float_margin(used, spec[:, run], result) if rounding is None else rounding)
        low = low[:, index] if whole else low  # the samples this method was for
        local = index.cpu().numpy()
        smallest = _smallest_margin(low, yb[index]).cpu().numpy() - margin[local]
        rows = np.arange(batch.start, batch.stop)[local]
        result.lower[method][rows] = smallest
        result.ran[method][rows] = True
        result.certified[method][rows] = smallest > 0
        done[index[torch.as_tensor(smallest > 0, device=index.device)]] = True
    return layers


def _float_margin(prop: Propagation, spec, result: SampleVerdicts):
    """Per row and sample, the float32 error of the margin row over the region (0 where no rule covers an
    operator: the caller's ``margin`` then carries the float error alone; the reason lands in ``skipped``)."""
    try:
        return forward_errors(prop).spec(spec)
    except UnsupportedOperator as e:
        result.skipped.setdefault("float-error", e.message)
        return 0.0


def _lipschitz_lower(prop: Propagation, logits, labels, spec, eps, result: SampleVerdicts, batch: slice, run, index,
                     global_pairs, margin: np.ndarray, rounding=0.0):
    """Lower bounds ``m_j - L_j eps`` of each margin over the ball for the samples ``run`` (of the batch), and the
    per-layer rows; records the radii of the samples ``index`` (among ``run``), less ``margin`` per sample and the
    float error ``rounding`` per row and sample."""
    bounds = local_lipschitz(prop, labels, global_pairs)
    margins = torch.einsum("snk,nk->sn", spec, logits) - prop._spec_rounding(spec)  # (S, N)
    low = margins - bounds.pair.T * eps
    masked = (margins - rounding).T.clone()  # the radii hold for the float32 network too
    masked[torch.arange(labels.shape[0], device=labels.device), labels] = torch.inf
    masked = masked - torch.as_tensor(margin[run.cpu().numpy()], dtype=masked.dtype, device=masked.device)[:, None]
    radii = bounds.radii(masked, eps)
    keep = torch.searchsorted(run, index)  # where each of ``index`` sits in ``run``
    result.radius[np.arange(batch.start, batch.stop)[index.cpu().numpy()]] = radii[keep].cpu().numpy()
    return low, bounds.layers


def certified_radii(verdicts) -> np.ndarray:
    """Per sample, the largest eps at which any method certified it (0 where none): a ball certified at eps
    contains every smaller ball, so this is a sound certified radius for the pipeline's attack cross-check."""
    verdicts = list(verdicts)
    if not verdicts:
        return np.zeros(0)
    radius = np.zeros(verdicts[0].correct.shape[0])
    for v in verdicts:
        radius = np.where(v.any_certified, np.maximum(radius, v.eps), radius)
    return radius
