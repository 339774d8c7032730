"""Empirical robustness: the upper side of the sandwich (certified <= true robust accuracy <= attacked accuracy).

:func:`evaluate` runs the chosen attacks per norm and eps and returns plain JSON-serialisable data: clean accuracy,
robust accuracy under the per-sample worst case over all attacks and per attack, success rates, the distribution of
the smallest perturbations found, a few adversarial examples, and the sanity checks of Carlini et al. 2019 ("On
Evaluating Adversarial Robustness"). Every adversarial example is re-checked here (misclassified, inside the box,
inside the ball as measured in float64), so an attack never has to be trusted. Robust accuracies from attacks are
upper bounds on the true robust accuracy only in that sense: they are estimates from above, not guarantees.
:func:`transfer` measures how often examples crafted on one model fool another (Szegedy et al. 2013).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from certify.attacks import Attack, Box, resolve_attacks
from certify.attacks.batching import AttackRunner
from certify.attacks.box import check_norm, distances
from certify.attacks.pgd import PGD
from certify.tracker import ProgressFn, Steps, Tracker

STAGE = "attacks"
# A sample whose found adversarial distance is below its certified radius by more than this relative margin is a
# soundness bug; closer than that it is within float32 rounding of the model evaluation and only warned about.
CERTIFICATE_RTOL = 1e-5
LARGE_EPS_SAMPLES = 100
LARGE_EPS_MAX_ACCURACY = 0.1
SQUARE_MARGIN = 0.05


class SoundnessError(RuntimeError):
    """An attack broke a sample inside its certified radius: the certificate (or the attack check) is wrong."""

    def __init__(self, index: int, norm: str, radius: float, distance: float, attack: str):
        super().__init__(f"soundness violation at sample {index}: certified {norm} radius {radius:.6g} but attack "
                         f"{attack!r} found a misclassified input at distance {distance:.6g}")
        self.index, self.norm, self.radius, self.distance, self.attack = index, norm, radius, distance, attack


# ----------------------------------------------------------------------------------------------- argument checks
def _as_inputs(x, dtype: torch.dtype) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64))
    if t.dim() < 2:
        raise ValueError(f"x must be a batch (n, ...) with at least 2 dimensions, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError("x is empty: nothing to evaluate")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("x contains NaN or infinite values")
    return t.to(dtype)


def _as_labels(y, n: int) -> torch.Tensor:
    arr = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"y must have shape ({n},) to match x, got {arr.shape}")
    if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "f" and np.all(arr == np.round(arr))):
        raise ValueError("y must hold integer class labels")
    if np.any(arr < 0):
        raise ValueError("y must hold non-negative class labels")
    return torch.as_tensor(arr.astype(np.int64))


def _as_epsilons(epsilons) -> list[float]:
    eps = [float(e) for e in (epsilons if np.ndim(epsilons) else [epsilons])]
    if not eps:
        raise ValueError("epsilons must not be empty")
    for e in eps:
        if not math.isfinite(e) or e < 0:
            raise ValueError(f"every eps must be finite and >= 0, got {e}")
    return sorted(set(eps))


def _as_device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _model_dtype(model) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


@contextlib.contextmanager
def _prepared(model, device: torch.device):
    """Eval mode on ``device`` with parameter gradients off (attacks differentiate inputs only); restored after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.to(device).eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _setup(model, x, y, input_range, device, batch_size, seed):
    if not isinstance(model, torch.nn.Module):
        raise ValueError("model must be a torch.nn.Module mapping a batch of inputs to logits")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if input_range is None or len(input_range) != 2:
        raise ValueError("input_range must be a pair (lo, hi)")
    box = Box(*input_range)
    xt = _as_inputs(x, _model_dtype(model))
    try:
        np.broadcast_to(box.lo, xt.shape[1:])
        np.broadcast_to(box.hi, xt.shape[1:])
    except ValueError:
        raise ValueError(f"input_range does not broadcast to the sample shape {tuple(xt.shape[1:])}") from None
    box.check_inside(xt.double().numpy())
    return box, xt, _as_labels(y, xt.shape[0]), _as_device(device)


def _logits_check(model, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
    with torch.no_grad():
        out = model(x[:1].to(device))
    if out.dim() != 2 or out.shape[0] != 1:
        raise ValueError(f"the model must map a batch (n, ...) to logits (n, classes); got shape {tuple(out.shape)}")
    if int(y.max()) >= out.shape[1]:
        raise ValueError(f"label {int(y.max())} out of range for a model with {out.shape[1]} classes")


# --------------------------------------------------------------------------------------------------- statistics
def _rate(mask: np.ndarray, over: int) -> float:
    return float(mask.sum()) / over if over else 0.0


def _perturbation_stats(dist: np.ndarray, deltas: np.ndarray | None, correct: np.ndarray) -> dict:
    """Distribution of the smallest perturbations found (upper bounds on each sample's true minimal distance)."""
    found = correct & np.isfinite(dist)
    out = {"n_found": int(found.sum()), "n_not_found": int((correct & ~np.isfinite(dist)).sum()),
           "estimate": "smallest perturbation found by the attacks: an upper bound on the true minimal distance"}
    if not found.any():
        return out
    d = dist[found]
    out.update(mean=float(d.mean()), median=float(np.median(d)), min=float(d.min()), max=float(d.max()),
               percentiles={str(q): float(np.percentile(d, q)) for q in (5, 25, 75, 95)})
    counts, edges = np.histogram(d, bins=min(20, max(5, int(np.ceil(np.sqrt(d.size))))))
    out["histogram"] = {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}
    if deltas is not None:
        flat = deltas[found].reshape(int(found.sum()), -1).astype(np.float64)
        # Szegedy et al.: "average minimum distortion" sqrt(sum(delta^2) / n), n the number of input values.
        out["average_minimum_distortion"] = float(np.mean(np.sqrt(np.sum(flat ** 2, axis=1) / flat.shape[1])))
    return out


def _examples(x, x_adv, y, clean_pred, adv_pred, dist, source, limit: int) -> list[dict]:
    idx = np.flatnonzero(np.isfinite(dist) & (dist > 0))[:limit]
    out = []
    for i in idx:
        orig = x[i].numpy().astype(np.float64)
        pert = x_adv[i].numpy().astype(np.float64)
        out.append({"index": int(i), "label": int(y[i]), "clean_prediction": int(clean_pred[i]),
                    "adversarial_prediction": int(adv_pred[i]), "attack": source[i][0], "eps": source[i][1],
                    "distance": float(dist[i]), "shape": list(orig.shape), "original": orig.tolist(),
                    "perturbed": pert.tolist(), "difference": (pert - orig).tolist()})
    return out


# --------------------------------------------------------------------------------------------------- sanity checks
def _check(name: str, passed: bool, detail: str) -> dict:
    return {"name": name, "passed": bool(passed), "detail": detail}


def _monotone_check(norm: str, epsilons: list[float], per_attack: dict, n: int) -> dict:
    tol = max(1.0 / n, 0.01)
    bad = []
    for name, acc in per_attack.items():
        ra = acc["robust_accuracy"]
        bad += [f"{name}: {ra[i]:.4f} at eps {epsilons[i]} -> {ra[i + 1]:.4f} at eps {epsilons[i + 1]}"
                for i in range(len(ra) - 1) if ra[i + 1] > ra[i] + tol]
    detail = "; ".join(bad) if bad else f"every attack's robust accuracy is non-increasing in eps (tolerance {tol:.3g})"
    return _check(f"monotone_in_eps/{norm}", not bad, detail)


def _square_check(norm: str, epsilons: list[float], per_attack: dict, kinds: dict, n: int) -> dict | None:
    squares = [a for a in per_attack if kinds[a] == "gradient_free"]
    gradients = [a for a in per_attack if kinds[a] == "gradient"]
    if not squares or not gradients:
        return None
    margin = max(SQUARE_MARGIN, 2.0 / n)
    bad = []
    for i, eps in enumerate(epsilons):
        g = min(per_attack[a]["robust_accuracy"][i] for a in gradients)
        for s in squares:
            sq = per_attack[s]["robust_accuracy"][i]
            if sq < g - margin:
                bad.append(f"eps {eps}: {s} {sq:.4f} vs best gradient attack {g:.4f}")
    detail = ("; ".join(bad) + " (gradient masking?)") if bad else \
        f"the gradient-free attack does not beat the gradient attacks by more than {margin:.3g}"
    return _check(f"gradient_free_not_stronger/{norm}", not bad, detail)


# ----------------------------------------------------------------------------------------------------- evaluation
class _NormState:
    """What one norm accumulates over all attacks: per-sample smallest distances, their sources and examples."""

    def __init__(self, x: torch.Tensor, correct: np.ndarray):
        n = x.shape[0]
        self.dist = np.where(correct, np.inf, 0.0)
        self.best = x.clone()
        self.adv_pred = np.full(n, -1)
        self.source: list[tuple[str, float | None] | None] = [None] * n

    def offer(self, x_adv: torch.Tensor, dist: np.ndarray, wrong: np.ndarray, pred: np.ndarray, attack: str,
              eps: float | None) -> None:
        better = np.flatnonzero(wrong & (dist < self.dist))
        if better.size:
            t = torch.as_tensor(better)
            self.best[t] = x_adv[t]
            self.dist[better] = dist[better]
            self.adv_pred[better] = pred[better]
            for i in better:
                self.source[i] = (attack, eps)


def _raise_on_violation(norm: str, state: _NormState, radii: np.ndarray, correct: np.ndarray) -> None:
    """Fail loudly, naming the sample, when an adversarial example lies inside a certified radius."""
    violating = np.flatnonzero(correct & (state.dist < radii * (1 - CERTIFICATE_RTOL)))
    if violating.size:
        i = int(violating[np.argmin(state.dist[violating] / radii[violating])])
        raise SoundnessError(i, norm, float(radii[i]), float(state.dist[i]), state.source[i][0])


def _certificate_check(norm: str, state: _NormState, radii: np.ndarray, correct: np.ndarray,
                       warnings: list[str]) -> dict:
    _raise_on_violation(norm, state, radii, correct)
    close = np.flatnonzero(correct & (state.dist < radii))
    if close.size:
        warnings.append(f"{norm}: {close.size} sample(s) broken within float rounding of their certified radius "
                        f"(first: sample {int(close[0])})")
    wrong_certified = np.flatnonzero(~correct & (radii > 0))
    if wrong_certified.size:
        warnings.append(f"{norm}: {wrong_certified.size} misclassified sample(s) have a positive certified radius "
                        f"(first: sample {int(wrong_certified[0])}); radii should be 0 for misclassified samples")
    return _check(f"certificate_consistent/{norm}", True,
                  "no sample was broken at a distance below its certified radius")


def _as_radii(certified_radii, norms, n) -> dict[str, np.ndarray]:
    if certified_radii is None:
        return {}
    if not isinstance(certified_radii, dict):
        raise ValueError("certified_radii must be a dict {norm: per-sample radii}")
    out = {}
    for norm, radii in certified_radii.items():
        check_norm(norm)
        r = np.asarray(radii, dtype=np.float64)
        if r.shape != (n,):
            raise ValueError(f"certified_radii[{norm!r}] must have shape ({n},), got {r.shape}")
        if np.any(np.isnan(r)) or np.any(r < 0):
            raise ValueError(f"certified_radii[{norm!r}] must be non-negative numbers")
        if norm in norms:
            out[norm] = r
    return out


def evaluate(model, x, y, *, norms=("l2",), epsilons=(0.1,), attacks="quick", input_range=(0.0, 1.0), seed: int = 0,
             batch_size: int | None = None, device=None, progress: ProgressFn | None = None,
             cancelled: Callable[[], bool] | None = None, certified_radii: dict | None = None, examples: int = 5,
             large_eps_check: bool = True, tracker: Tracker | None = None) -> dict:
    """Attack ``model`` on ``(x, y)`` for every norm and eps; plain data out.

    The result holds ``clean_accuracy``; per norm under ``results``: ``robust_accuracy`` and ``success_rate`` per eps
    (worst case over all attacks, per sample), ``per_attack`` (the same per attack), ``minimal_perturbation`` (the
    distribution of the smallest perturbations found), ``examples`` and, with certificates, ``certified_accuracy``;
    ``attacks`` (each attack with its parameters), ``runs`` (every attack run: norm, eps, samples, broken, seconds),
    ``skipped``, ``sanity_checks`` ([{name, passed, detail}]), ``warnings`` and ``timings``. ``epsilons`` come back
    sorted and without duplicates.

    Progress goes to ``progress(stage, fraction, message)`` and ``cancelled()`` is checked at every attack step, or
    both go through ``tracker`` (a pipeline run's). Raises ValueError for bad arguments,
    ``certify.tracker.Cancelled`` when cancelled and :class:`SoundnessError` when a sample is broken inside its
    certified radius.
    """
    started = time.perf_counter()
    norms = [check_norm(nm) for nm in (norms if not isinstance(norms, str) else [norms])]
    if not norms:
        raise ValueError("norms must not be empty")
    epsilons = _as_epsilons(epsilons)
    built = resolve_attacks(attacks)
    if not isinstance(examples, int) or examples < 0:
        raise ValueError(f"examples must be a non-negative integer, got {examples!r}")
    box, xt, yt, dev = _setup(model, x, y, input_range, device, batch_size, seed)
    radii = _as_radii(certified_radii, norms, xt.shape[0])
    plan = [(a, nm) for nm in norms for a in built if nm in a.norms]
    skipped = [{"attack": a.name, "norm": nm, "reason": f"{a.name} supports only {', '.join(a.norms)}"}
               for nm in norms for a in built if nm not in a.norms]
    warnings: list[str] = [f"no attack supports the {nm} norm: its robust accuracy is the clean accuracy"
                           for nm in norms if not any(m == nm for _, m in plan)]
    jobs = sum(1 if a.minimal else len(epsilons) for a, _ in plan) + (len(norms) if large_eps_check else 0)
    prog = Steps(tracker or Tracker(progress, cancelled), STAGE, jobs)
    checks: list[dict] = []
    with _prepared(model, dev):
        _logits_check(model, xt, yt, dev)
        sweep = _Sweep(AttackRunner(model, box, device=dev, seed=seed, batch_size=batch_size, step=prog.step,
                                    on_batch=prog.batch), box, xt, yt, epsilons, prog)
        clean_s = sweep.classify()
        results = {nm: _evaluate_norm(sweep, nm, [a for a, m in plan if m == nm], radii.get(nm), examples,
                                      large_eps_check, checks, warnings) for nm in norms}
    warnings += [f"sanity check {c['name']} failed: {c['detail']}" for c in checks if not c["passed"]]
    prog.report(1.0)
    n = sweep.n
    return {"n": n, "n_correct": sweep.n_correct, "clean_accuracy": _rate(sweep.correct, n), "norms": norms,
            "epsilons": epsilons, "input_range": box.describe(), "seed": seed, "device": str(dev),
            "batch_size": sweep.runner.batch_size, "attacks": [a.describe() for a in built], "skipped": skipped,
            "runs": sweep.runs, "results": results, "sanity_checks": checks, "warnings": warnings,
            "timings": {"clean_s": round(clean_s, 4), "total_s": round(time.perf_counter() - started, 4)}}


@dataclass
class _Sweep:
    """What every attack of one evaluation shares: the runner, the data, the clean predictions, the log of runs."""

    runner: AttackRunner
    box: Box
    xt: torch.Tensor
    yt: torch.Tensor
    epsilons: list[float]
    prog: Steps
    runs: list[dict] = field(default_factory=list)
    clean_pred: np.ndarray = field(init=False)  # the rest is set by classify()
    correct: np.ndarray = field(init=False)
    attacked: torch.Tensor = field(init=False)  # the indices of the correctly classified samples
    n: int = field(init=False)
    n_correct: int = field(init=False)

    def classify(self) -> float:
        """Predict the clean inputs; the seconds it took."""
        t0 = time.perf_counter()
        self.clean_pred = self.runner.predict(self.xt).numpy()
        self.correct = self.clean_pred == self.yt.numpy()
        self.n, self.n_correct = int(self.xt.shape[0]), int(self.correct.sum())
        self.attacked = torch.as_tensor(np.flatnonzero(self.correct))
        return time.perf_counter() - t0


def _evaluate_norm(sweep: _Sweep, nm: str, attacks: list[Attack], radii: np.ndarray | None, examples: int,
                   large_eps_check: bool, checks: list[dict], warnings: list[str]) -> dict:
    """Every attack for one norm; its results, with its sanity checks appended to ``checks``."""
    xt, yt, epsilons = sweep.xt, sweep.yt, sweep.epsilons
    correct, n, n_correct = sweep.correct, sweep.n, sweep.n_correct
    state = _NormState(xt, correct)
    per_attack: dict[str, dict] = {}
    kinds: dict[str, str] = {}
    for attack in attacks:
        key = _unique_key(attack, per_attack)
        kinds[key] = "gradient_free" if attack.gradient_free else "gradient"
        broken = _run_attack(sweep.runner, attack, key, nm, epsilons, xt, yt, sweep.attacked, state, sweep.prog,
                             sweep.runs)
        per_attack[key] = {"robust_accuracy": [_rate(correct & ~b, n) for b in broken],
                           "success_rate": [_rate(correct & b, n_correct) for b in broken]}
        if radii is not None:
            _raise_on_violation(nm, state, radii, correct)
    worst = [state.dist <= eps for eps in epsilons]
    res = {"epsilons": epsilons,
           "robust_accuracy": [_rate(correct & ~b, n) for b in worst],
           "success_rate": [_rate(correct & b, n_correct) for b in worst],
           "per_attack": per_attack,
           "minimal_perturbation": _perturbation_stats(state.dist, (state.best - xt).numpy() if n_correct else None,
                                                       correct),
           "examples": _examples(xt, state.best, yt.numpy(), sweep.clean_pred, state.adv_pred, state.dist,
                                 state.source, examples)}
    checks.append(_monotone_check(nm, epsilons, per_attack, n))
    square = _square_check(nm, epsilons, per_attack, kinds, n)
    if square:
        checks.append(square)
    if large_eps_check:
        checks.append(_large_eps_check(sweep.runner, nm, sweep.box, xt, yt, sweep.attacked, sweep.prog, sweep.runs))
    if radii is not None:
        checks.append(_certificate_check(nm, state, radii, correct, warnings))
        res["certified_accuracy"] = [_rate(correct & (radii > eps), n) for eps in epsilons]
    return res


def _unique_key(attack: Attack, taken: dict) -> str:
    key, k = attack.name, 2
    while key in taken:
        key, k = f"{attack.name}#{k}", k + 1
    return key


def _attack_rows(runner: AttackRunner, attack: Attack, norm: str, eps, xt, yt, attacked):
    """Run one attack on the correctly classified rows; (candidates, float64 distances, misclassified, predictions)
    for all rows, with the unattacked rows left as they are."""
    x_adv = xt.clone()
    if attacked.numel():
        x_adv[attacked] = runner.run(attack, xt[attacked], yt[attacked], norm, eps)
    pred = runner.predict(x_adv).numpy()
    dist = distances(x_adv, xt, norm).numpy()
    return x_adv, dist, pred != yt.numpy(), pred


def _run_attack(runner, attack, key, norm, epsilons, xt, yt, attacked, state: _NormState, prog: Steps,
                runs: list) -> list[np.ndarray]:
    """Run ``attack`` (once if minimal, else per eps); per eps, which samples it broke within eps."""
    broken = []
    for eps in ([None] if attack.minimal else epsilons):
        prog.start(f"{key} ({norm}" + (")" if eps is None else f", eps={eps})"))
        t0 = time.perf_counter()
        x_adv, dist, wrong, pred = _attack_rows(runner, attack, norm, eps, xt, yt, attacked)
        valid = wrong & (dist <= (math.inf if eps is None else eps))
        state.offer(x_adv, np.where(valid, dist, np.inf), valid, pred, key, eps)
        runs.append({"attack": key, "norm": norm, "eps": eps, "samples": int(attacked.numel()),
                     "broken": int(valid.sum()), "seconds": round(time.perf_counter() - t0, 4)})
        prog.finish_job()
        if eps is None:
            broken = [valid & (dist <= e) for e in epsilons]
        else:
            broken.append(valid)
    return broken


def _large_eps_check(runner, norm, box: Box, xt, yt, attacked, prog: Steps, runs: list) -> dict:
    """Carlini et al. 2019: at an eps covering the whole box an attack must (almost) always succeed."""
    eps = box.diameter(norm, tuple(xt.shape[1:]))
    subset = attacked[:LARGE_EPS_SAMPLES]
    attack = PGD(steps=50, loss="margin")
    prog.start(f"sanity check: pgd-50 at eps={eps:.4g} ({norm})")
    t0 = time.perf_counter()
    if subset.numel() == 0:
        prog.finish_job()
        return _check(f"large_eps_breaks_all/{norm}", True, "no correctly classified sample to attack")
    x_adv = runner.run(attack, xt[subset], yt[subset], norm, eps)
    survived = float((runner.predict(x_adv) == yt[subset]).float().mean())
    runs.append({"attack": "pgd (sanity check)", "params": attack.params, "norm": norm, "eps": eps,
                 "samples": int(subset.numel()), "broken": int(round((1 - survived) * subset.numel())),
                 "seconds": round(time.perf_counter() - t0, 4)})
    prog.finish_job()
    passed = survived <= LARGE_EPS_MAX_ACCURACY
    detail = (f"robust accuracy {survived:.4f} at eps {eps:.4g} (the whole box) on {subset.numel()} samples"
              + ("" if passed else f"; above {LARGE_EPS_MAX_ACCURACY}: gradient masking or a broken attack?"))
    return _check(f"large_eps_breaks_all/{norm}", passed, detail)


# ------------------------------------------------------------------------------------------------------- transfer
def transfer(model_a, model_b, x, y, *, norm: str = "linf", epsilons=(0.1,), attack="pgd", input_range=(0.0, 1.0),
             seed: int = 0, batch_size: int | None = None, device=None, progress: ProgressFn | None = None,
             cancelled: Callable[[], bool] | None = None, tracker: Tracker | None = None) -> dict:
    """Craft adversarial examples on ``model_a`` and evaluate them on ``model_b`` (Szegedy et al.'s second finding).

    Only samples both models classify correctly are attacked. Per eps: the success rate on A, the transfer rate
    (the fraction of A's successful examples that also fool B) and B's accuracy on all crafted inputs.
    """
    check_norm(norm)
    epsilons = _as_epsilons(epsilons)
    if isinstance(attack, list):
        raise ValueError("transfer takes one attack: a name, a (name, params) pair or an Attack")
    (built,) = resolve_attacks([attack])
    if norm not in built.norms:
        raise ValueError(f"{built.name} does not support the {norm} norm")
    box, xt, yt, dev = _setup(model_a, x, y, input_range, device, batch_size, seed)
    if not isinstance(model_b, torch.nn.Module):
        raise ValueError("model_b must be a torch.nn.Module")
    prog = Steps(tracker or Tracker(progress, cancelled), STAGE, len(epsilons))
    started = time.perf_counter()
    with _prepared(model_a, dev), _prepared(model_b, dev):
        _logits_check(model_a, xt, yt, dev)
        _logits_check(model_b, xt, yt, dev)
        run_a = AttackRunner(model_a, box, device=dev, seed=seed, batch_size=batch_size, step=prog.step,
                             on_batch=prog.batch)
        run_b = AttackRunner(model_b, box, device=dev, seed=seed, batch_size=batch_size)
        y_np = yt.numpy()
        both = (run_a.predict(xt).numpy() == y_np) & (run_b.predict(xt).numpy() == y_np)
        attacked = torch.as_tensor(np.flatnonzero(both))
        per_eps = []
        for eps in epsilons:
            prog.start(f"transfer {built.name} ({norm}, eps={eps})")
            x_adv, dist, wrong_a, _ = _attack_rows(run_a, built, norm, eps, xt, yt, attacked)
            fooled_a = both & wrong_a & (dist <= eps)
            fooled_b = both & (run_b.predict(x_adv).numpy() != y_np)
            per_eps.append({"eps": eps, "source_success_rate": _rate(fooled_a, int(both.sum())),
                            "transfer_rate": _rate(fooled_a & fooled_b, int(fooled_a.sum())),
                            "target_accuracy": _rate(both & ~fooled_b, int(both.sum()))})
            prog.finish_job()
    prog.report(1.0)
    return {"norm": norm, "attack": built.describe(), "n": int(xt.shape[0]), "n_both_correct": int(both.sum()),
            "input_range": box.describe(), "seed": seed, "device": str(dev), "per_eps": per_eps,
            "timings": {"total_s": round(time.perf_counter() - started, 4)}}
