"""Certified radii and the public certificate: per-layer table, network bounds, certified accuracy.

A sample x of class y is certified at radius r when no perturbation of norm <= r changes the predicted class:
``f_y(x + d) - f_j(x + d) >= m_yj(x) - L_yj ||d|| > 0`` for every j != y, where ``m_yj`` is the logit margin and
``L_yj`` bounds the Lipschitz constant of ``f_y - f_j``. So ``r = min_j m_yj / L_yj`` (Tsuzuku et al. 2018 use
``sqrt(2) L`` for ``L_yj``; we use that, or the tighter bound of the last layer's row differences). The network
runs in float32, so the margin is first reduced by a bound on the float error of the forward pass over the ball
(:mod:`certify.lipschitz.rounding`): the radius certifies the network as run. See docs/certified.md.

L-inf radii take the larger of two sound values: the L-inf analysis itself (``||d||_inf <= r`` and L-inf
operator norms) and the L2 radius divided by ``sqrt(d)`` (``||d||_2 <= sqrt(d) ||d||_inf``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from certify.lipschitz import empirical, rounding
from certify.lipschitz.network import Analysis, analyse, pair_bounds
from certify.lipschitz.rules import numel

DEFAULT_EPSILONS = (0.1,)


def per_sample_shape(graph, input_shape) -> tuple:
    """Accept the input shape without the batch dimension, or with a leading batch of 1 when the graph's
    declared input rank says it includes one."""
    shape = tuple(int(d) for d in input_shape)
    declared = graph.shapes.get(graph.input_names[0]) if len(graph.input_names) == 1 else None
    if declared is not None and len(shape) == len(declared):
        if shape[0] != 1:
            raise ValueError(f"input shape {list(shape)} includes a batch of {shape[0]}; give the per-sample shape")
        shape = shape[1:]
    if declared is not None and len(declared) == len(shape) + 1:
        for given, known in zip(shape, declared[1:]):
            if known is not None and given != known:
                raise ValueError(f"input shape {list(shape)} does not match the model's {list(declared[1:])}")
    if any(d <= 0 for d in shape):
        raise ValueError(f"input shape {list(shape)} has a non-positive dimension")
    return shape


def network_bound(module, input_shape, norm: str = "l2", progress: Callable[[float, str], None] | None = None,
                  eclipse: bool = True) -> Analysis:
    """The per-layer bounds and the composed network bound (see :mod:`certify.lipschitz.network`)."""
    return analyse(module, per_sample_shape(module, input_shape), norm=norm, progress=progress, eclipse=eclipse)


def _radii_from_pairs(logits: np.ndarray, y: np.ndarray, pairs: np.ndarray | None, errors: np.ndarray,
                      growth: float = 1.0) -> np.ndarray:
    """``min_j (m_yj - 2 sqrt(2) a) / (L_yj + sqrt(2) b growth)`` per sample; 0 when misclassified, when no bound
    exists or when the float error swallows the margin.

    ``m_yj`` is the float logit margin at x and ``a + b ||x' - x||_2`` bounds the L2 norm of the float error of
    the logits (:mod:`certify.lipschitz.rounding`), so ``|delta_y - delta_j| <= sqrt(2) (a + b r)`` at x' and
    ``sqrt(2) a`` at x; ``growth`` converts the radius's norm to L2 (sqrt(d) for L-inf radii)."""
    n = logits.shape[0]
    radii = np.zeros(n)
    if pairs is None:
        return radii
    for i in range(n):
        if not np.isfinite(logits[i]).all():
            continue
        label = int(y[i])
        a, b = (math.inf if math.isnan(v) else float(v) for v in errors[i])
        margins = logits[i, label] - logits[i] - 2 * math.sqrt(2) * a
        slopes = pairs[label] + math.sqrt(2) * b * growth
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(slopes > 0, margins / slopes, np.where(margins > 0, np.inf, 0.0))
        ratios[label] = np.inf
        radius = float(np.min(ratios))
        radii[i] = 0.0 if np.isnan(radius) else max(radius, 0.0)
    return radii


def _l2_analysis(module, shape, *candidates) -> Analysis:
    for c in candidates:
        if isinstance(c, Analysis) and c.norm == "l2":
            return c
    return analyse(module, shape, norm="l2")


def float_errors(module, x, analysis: Analysis) -> np.ndarray:
    """``(n, 2)`` per sample: ``a + b r`` bounds the L2 norm of the logits' float error within L2 distance r."""
    xs = torch.as_tensor(np.asarray(x), dtype=module.input_dtype())
    return rounding.logit_errors(module, analysis, xs)


def certified_radii(module, x: np.ndarray, y: np.ndarray, bounds: Analysis | np.ndarray | None,
                    l2_bounds: Analysis | np.ndarray | None = None, errors: np.ndarray | None = None) -> np.ndarray:
    """Certified radius of every sample (numpy array; 0 for misclassified samples) of the network as it runs (in
    its float type): no x' within the radius makes the float forward pass predict another class.

    ``bounds`` is the :class:`Analysis` of :func:`network_bound` (its norm decides the radius norm) or a matrix
    ``L[y, j]``. For L-inf, ``l2_bounds`` (optional) adds the converted L2 radius ``r_2 / sqrt(d)``. ``errors``
    (:func:`float_errors`) is computed when not given (from the L2 analysis among the bounds, else a new one).
    """
    xs = torch.as_tensor(np.asarray(x), dtype=module.input_dtype())
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if xs.shape[0] != y.shape[0]:
        raise ValueError(f"{xs.shape[0]} inputs but {y.shape[0]} labels")
    logits = empirical.outputs(module, xs).double().numpy()
    if y.size and (y.min() < 0 or y.max() >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1]})")
    if errors is None:
        errors = float_errors(module, xs, _l2_analysis(module, tuple(xs.shape[1:]), bounds, l2_bounds))
    dim = numel(xs.shape[1:])
    linf = isinstance(bounds, Analysis) and bounds.norm == "linf"
    pairs = pair_bounds(bounds) if isinstance(bounds, Analysis) else bounds
    radii = _radii_from_pairs(logits, y, pairs, errors, math.sqrt(dim) if linf else 1.0)
    if l2_bounds is not None:
        l2_pairs = pair_bounds(l2_bounds) if isinstance(l2_bounds, Analysis) else l2_bounds
        radii = np.maximum(radii, _radii_from_pairs(logits, y, l2_pairs, errors) / math.sqrt(dim))
    radii[logits.argmax(axis=1) != y] = 0.0
    return radii


def _number(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def layer_row(record, chain: int | None = None) -> dict:
    """One node's own bound as a row; ``layer_rows`` adds what fusion and chains found once the graph is done."""
    b = record.bound
    return {"node": record.ctx.node, "op": record.ctx.op_type,
            "shape": list(record.ctx.output_shapes[0] or []) if record.ctx.output_shapes else [],
            "lower": _number(b.lower), "upper": _number(b.upper), "ratio": _number(b.ratio()),
            "method": b.method, "exact": bool(b.exact), "ms": round(float(b.ms), 3), "reason": b.reason,
            "fused_into": None, "fused_nodes": None, "fused": None, "chain": chain}


def layer_rows(analysis: Analysis) -> list[dict]:
    """One row per runtime ONNX node: its own bound, and for fused groups which node carries the fused bound."""
    chain_of = {}
    for c_index, chain in enumerate(analysis.chains):
        for item in chain.items:
            for record in getattr(item, "members", [item]):
                chain_of[record.index] = c_index
    rows = []
    for record in analysis.records:
        row = layer_row(record, chain_of.get(record.index))
        segment = record.segment
        if segment is not None and len(segment.members) > 1:
            head = segment.members[0]
            if head is record and segment.bound is not None:
                row["fused_nodes"] = [m.ctx.node for m in segment.members]
                fb = segment.bound
                row["fused"] = {"upper": _number(fb.upper), "lower": _number(fb.lower), "ratio": _number(fb.ratio()),
                                "method": fb.method, "ms": round(float(fb.ms), 3)}
            elif head is not record:
                row["fused_into"] = head.ctx.node
        rows.append(row)
    return rows


def _first_reason(analysis: Analysis) -> str | None:
    reason = analysis.reasons.get(analysis.output_name)
    if reason:
        return reason
    for record in analysis.records:
        if record.bound is not None and record.bound.upper is None and record.bound.reason:
            return record.bound.reason
    return None


def network_summary(analysis: Analysis, lower: dict | None) -> dict:
    product = _number(analysis.product.get(analysis.output_name))
    upper = _number(analysis.composed.get(analysis.output_name))
    low = lower.get("lower") if lower else None
    methods = ["per-layer product"]
    if any(len(s.members) > 1 for s in analysis.segments):
        methods.append("fused linear segments")
    methods += sorted({c.method for c in analysis.chains if c.upper is not None})
    if upper is None:
        methods = ["unbounded"]
    return {
        "norm": analysis.norm,
        "product": product,
        "upper": upper,
        "lower": _number(low),
        "ratio": _number(upper / low) if upper and low else None,
        "method": " + ".join(methods),
        "reason": None if upper is not None else (_first_reason(analysis) or "an unbounded layer"),
        "lower_method": lower,
        "chains": [{"nodes": [m.ctx.node for item in c.items for m in getattr(item, "members", [item])],
                    "upper": _number(c.upper), "ms": round(c.ms, 3)} for c in analysis.chains],
        "chains_skipped": analysis.chains_skipped,
    }


def _random_points(shape, count: int, seed: int, input_range) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    lo, hi = input_range
    return lo + (hi - lo) * torch.rand((count, *shape), generator=gen)


def certified_summary(module, x: np.ndarray, y: np.ndarray, analysis: Analysis, l2_analysis: Analysis | None,
                      epsilons) -> dict:
    """The ``certified`` part of a certificate: radii of the samples ``(x, y)``, certified accuracy per epsilon,
    and the float error subtracted from every margin."""
    errors = float_errors(module, x, l2_analysis or analysis)
    radii = certified_radii(module, x, y, analysis, l2_bounds=l2_analysis, errors=errors)
    logits = empirical.outputs(module, torch.as_tensor(x, dtype=module.input_dtype())).numpy()
    correct = logits.argmax(axis=1) == np.asarray(y).reshape(-1)
    finite = radii[correct]
    return {
        "norm": analysis.norm,
        "samples": int(len(y)),
        "clean_accuracy": float(correct.mean()) if len(y) else None,
        "certified_accuracy": {str(float(e)): float(np.mean(correct & (radii > float(e)))) for e in epsilons},
        "radius": {
            "mean": _number(finite.mean()) if finite.size else None,
            "median": _number(np.median(finite)) if finite.size else None,
            "max": _number(finite.max()) if finite.size else None,
        },
        "radii": [_number(r) for r in radii],
        "float_error": {
            "method": "forward error analysis of the float forward pass (certify.lipschitz.rounding)",
            "max_at_sample": _number(errors[:, 0].max()) if len(errors) else None,
            "max_growth": _number(errors[:, 1].max()) if len(errors) else None,
            "per_sample": [_number(a) for a in errors[:, 0]],
        },
    }


def certificate(module, input_shape, dataset=None, norm: str = "l2", epsilons=DEFAULT_EPSILONS,
                progress: Callable[[float, str], None] | None = None, samples: int = 200, seed: int = 0,
                input_range=(0.0, 1.0), ascent_steps: int = 100, lower_budget_s: float = 30.0,
                on_layer: Callable[[dict], None] | None = None,
                on_analysis: Callable[[Analysis], None] | None = None, chain_budget_s: float | None = None) -> dict:
    """Bound ``module`` (an ``OnnxGraph`` from ``certify.to_torch``) and, with data, certify its samples.

    ``input_shape``: per-sample input shape (a leading batch of 1 is accepted). ``dataset``: ``(x, y)`` numpy
    arrays (float32 inputs with the batch first, int64 labels) or None; the first ``samples`` are used.
    ``progress(fraction, message)`` is called per layer; ``on_layer(row)`` gets each node's own bound as soon as it
    is computed (before fusion), so a long run shows rows as it goes; ``on_analysis`` gets the finished
    :class:`Analysis` (its pair bounds tighten the local certificates). The empirical lower bound's secant ascent
    takes ``ascent_steps`` steps within ``lower_budget_s`` seconds (its own time is reported apart, in
    ``network.lower_method.seconds``); ``chain_budget_s`` caps the joint chain bounds (default: no cap, the
    tightest bound; see :func:`certify.lipschitz.network.analyse`). Returns a JSON-ready dict: ``layers`` (one row
    per ONNX node), ``network`` ({product, upper, lower, ratio, method, reason}) and, with data, ``certified``
    ({norm, samples, clean_accuracy, certified_accuracy: {eps: acc}, radius summary, radii}).
    """
    if norm not in ("l2", "linf"):
        raise ValueError(f"norm must be 'l2' or 'linf', not {norm!r}")
    report = progress or (lambda fraction, message: None)
    shape = per_sample_shape(module, input_shape)
    analysis = analyse(module, shape, norm=norm, progress=lambda f, m: report(0.7 * f, m),
                       on_record=(lambda record: on_layer(layer_row(record))) if on_layer else None,
                       chain_budget_s=chain_budget_s)
    if on_analysis is not None:
        on_analysis(analysis)
    l2_analysis = analyse(module, shape, norm="l2") if norm == "linf" else None
    if dataset is not None:
        x, y = (np.asarray(a)[:samples] for a in dataset)
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"dataset inputs have shape {list(x.shape[1:])}, the model takes {list(shape)}")
        points = torch.as_tensor(x, dtype=module.input_dtype())
    else:
        points = _random_points(shape, 16, seed, input_range).to(module.input_dtype())
    report(0.75, "empirical lower bound")
    lower = empirical.lower_bound(module, points[:64], norm=norm, ascent_steps=ascent_steps, seed=seed,
                                  budget_s=lower_budget_s)
    result = {"input_shape": list(shape), "layers": layer_rows(analysis), "network": network_summary(analysis, lower)}
    if dataset is not None:
        report(0.9, "certified radii")
        result["certified"] = certified_summary(module, x, y, analysis, l2_analysis, epsilons)
    report(1.0, "done")
    return result
