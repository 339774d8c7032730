"""One certified verdict per sample: the global Lipschitz certificate and the local methods, combined.

A sample counts as certified at (norm, eps) when any chosen sound method certified it: ``global`` (its certified
radius exceeds eps) or one of :data:`certify.local.samples.METHODS`. The local methods bound the network in exact
arithmetic on its weights; the network runs in float32, so each sample's margin is first reduced by the float error
bound of its logits (:func:`float_margin`), which makes every verdict hold for the network as it runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

GLOBAL = "global"
TIME_SPENT = "time budget spent"  # certify.local.samples' reason for a method it had no time left for


@dataclass
class NormVerdicts:
    """Every method's verdicts for one norm: ``local[eps]`` the local engine's (absent when it could not run),
    ``skipped`` why the local analysis did not run (None when it did)."""

    norm: str
    correct: np.ndarray
    global_radii: np.ndarray
    use_global: bool = True  # False: "global" was not chosen (its radii are still cross-checked)
    local: dict = field(default_factory=dict)  # eps -> SampleVerdicts
    skipped: str | None = None

    def certified(self, eps: float) -> dict[str, np.ndarray]:
        """method -> per-sample certified flags at eps, cheapest first (global first)."""
        out = {}
        if self.use_global:
            out[GLOBAL] = self.correct & (self.global_radii > eps)
        verdicts = self.local.get(eps)
        if verdicts is not None:  # a method that could not run at all (refused a node, no time left) is left out
            out.update((m, verdicts.certified[m]) for m in verdicts.methods
                       if m not in verdicts.skipped or verdicts.ran[m].any())
        return out

    def best(self, eps: float) -> list[str | None]:
        flags = self.certified(eps)
        return [next((m for m, hit in flags.items() if hit[i]), None) for i in range(self.correct.shape[0])]

    def accuracy(self, eps: float) -> float:
        flags = list(self.certified(eps).values())
        if not flags or not self.correct.size:
            return 0.0
        return float(np.logical_or.reduce(flags).mean())

    def radii(self) -> np.ndarray:
        """Per sample, max(global radius, largest eps a local method certified): what the attacks cross-check."""
        radius = np.array(self.global_radii, dtype=np.float64)
        for eps, verdicts in self.local.items():
            radius = np.where(verdicts.any_certified, np.maximum(radius, eps), radius)
        return radius


def certified_radii_of(cert: dict) -> np.ndarray:
    """The per-sample radii of a certificate for the cross-check. The report writes an infinite radius (a sample
    no perturbation can flip: every margin has a zero Lipschitz bound) as null; it stays infinite here, so the
    attacks' cross-check holds it to that claim instead of skipping it."""
    return np.asarray([math.inf if r is None else r for r in cert["certified"]["radii"]], dtype=np.float64)


def float_margin(float_error: dict, norm: str, eps: float, dim: int) -> np.ndarray:
    """Per sample, a bound on how much the float32 forward pass can move any logit difference within the ball:
    ``|delta_y - delta_j| <= sqrt(2) ||delta||_2 <= sqrt(2) (a + b r)`` with r the ball's L2 radius (eps, or
    eps sqrt(d) for L-inf). ``b`` is the largest growth over the samples (never smaller than each one's)."""
    growth = float_error.get("max_growth")
    growth = math.inf if growth is None else float(growth)
    at = np.asarray([math.inf if a is None else a for a in float_error["per_sample"]], dtype=np.float64)
    r = eps * math.sqrt(dim) if norm == "linf" else eps
    return math.sqrt(2.0) * (at + growth * r)


def local_methods(certifiers) -> tuple[str, ...]:
    from certify.local.samples import METHODS

    return tuple(m for m in METHODS if m in certifiers)


def certify_norm(module, x, y, norm: str, epsilons, certifiers, cert: dict, input_range, *, device: str = "cpu",
                 time_budget: float | None = None, global_pairs=None,
                 progress: Callable[[float, str], None] | None = None) -> NormVerdicts:
    """Run the chosen local methods at each eps of ``norm`` beside the global certificate ``cert`` (the result of
    :func:`certify.lipschitz.certificate.certificate` with data). An operator the local engine refuses stops the
    local analysis (``skipped`` names the node); the global verdicts stand. ``global_pairs``: the global
    ``L[y, j]`` of ``norm`` (:func:`certify.lipschitz.network.pair_bounds`), which caps the local Lipschitz
    bounds."""
    import time

    from certify.local.rules import UnsupportedOperator
    from certify.local.samples import certify_samples

    report = progress or (lambda fraction, message: None)
    cc = cert["certified"]
    dim = int(np.prod(np.asarray(x).shape[1:]))
    out = NormVerdicts(norm, _correct(module, x, y), certified_radii_of(cert), GLOBAL in certifiers)
    methods = local_methods(certifiers)
    start = time.monotonic()
    for i, eps in enumerate(epsilons):
        eps = float(eps)
        report(i / len(epsilons), f"{norm} eps={eps:g}: {', '.join(methods) or 'global only'}")
        if not methods:
            continue
        left = None if time_budget is None else max(0.0, time_budget - (time.monotonic() - start))
        try:
            verdicts = certify_samples(module, x, y, eps, norm, tuple(input_range), methods, time_budget=left,
                                       device=device, margin=float_margin(cc["float_error"], norm, eps, dim),
                                       skip_certified=False, global_pairs=global_pairs)
        except UnsupportedOperator as e:
            out.skipped = e.message
            break
        refused = [why for m, why in verdicts.skipped.items() if not verdicts.ran[m].any() and why != TIME_SPENT]
        if len(refused) == len(methods):  # every method stopped at a node: the global certificate stands alone
            out.skipped = refused[0]
            break
        out.local[eps] = verdicts
    report(1.0, "done")
    return out


def _correct(module, x, y) -> np.ndarray:
    import torch

    from certify.lipschitz import empirical

    logits = empirical.outputs(module, torch.as_tensor(np.asarray(x), dtype=module.input_dtype())).numpy()
    return logits.argmax(axis=1) == np.asarray(y).reshape(-1)


def section(by_norm: dict[str, NormVerdicts], epsilons, key: Callable[[float], str]) -> dict:
    """The report's per-method additions to ``certified``: accuracy (best sound), methods, ms_per_sample,
    best_method, local (skipped reasons)."""
    accuracy, methods, timing, best, local = {}, {}, {}, {}, {}
    for norm, v in by_norm.items():
        accuracy[norm] = {key(e): v.accuracy(float(e)) for e in epsilons}
        methods[norm] = {key(e): {m: float(hit.mean()) if hit.size else 0.0
                                  for m, hit in v.certified(float(e)).items()} for e in epsilons}
        best[norm] = {key(e): v.best(float(e)) for e in epsilons}
        timing[norm] = {key(e): {m: round(r.ms_per_sample(m), 3) for m in r.methods}
                        for e, r in v.local.items()}
        skipped = {m: why for r in v.local.values() for m, why in r.skipped.items()}
        local[norm] = {"skipped": v.skipped} if v.skipped else ({"skipped_methods": skipped} if skipped else {})
    return {"accuracy": accuracy, "methods": methods, "ms_per_sample": timing, "best_method": best, "local": local}


def layer_rows(by_norm: dict[str, NormVerdicts], key: Callable[[float], str]) -> dict:
    """Table-5 rows of local layerwise Lipschitz bounds, per norm and eps: node, op, global and local upper."""
    return {norm: {key(e): [{"node": r.node, "op": r.op_type, "global_upper": r.global_upper,
                             "local_mean": r.local_mean, "local_max": r.local_max} for r in verdicts.layers]
                   for e, verdicts in v.local.items() if verdicts.layers}
            for norm, v in by_norm.items()}
