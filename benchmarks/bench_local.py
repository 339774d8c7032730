"""Local certification against attacks: certified accuracy per method, time per sample, and wrong verdicts.

Run: ``python benchmarks/bench_local.py`` (``--quick`` for fewer alpha-CROWN steps and only the digits part;
``--device cuda`` on a GPU). Two tables:

1. The digits MLP (``examples/``), L-inf eps 0.05 / 0.1 and L2 eps 0.1 / 0.3: each method's certified accuracy
   (every method runs on every correctly classified sample) and milliseconds per sample, the best per sample,
   the global Lipschitz certificate, and the accuracy left by PGD (100 steps, 3 restarts) as the upper side.
   ``wrong`` counts samples certified by some method and broken by the attack: it must be 0.
2. The VNN-COMP 2021 development instances (``../shared/vnncomp2021-dev``): each property's exact input box and
   its output rows (``y_true - y_other`` > 0), certified by IBP, CROWN and alpha-CROWN (tried where CROWN
   fails; slopes optimised for the intermediate bounds too), against the published
   ``verdicts.csv`` (``holds``) and a box PGD (``falsified``). ``wrong`` counts certified instances whose verdict
   is ``violated``: it must be 0.
"""

from __future__ import annotations

import argparse
import csv
import re
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from certify.attacks import build_attack
from certify.attacks.batching import AttackRunner
from certify.attacks.box import Box
from certify.convert import to_torch
from certify.local.bounds import Propagation, float64_graph
from certify.local.region import Region
from certify.local.samples import METHODS, certify_samples

ROOT = Path(__file__).resolve().parent.parent
VNNCOMP = ROOT.parent / "shared" / "vnncomp2021-dev"
DIGITS_SETTINGS = (("linf", 0.05), ("linf", 0.1), ("l2", 0.1), ("l2", 0.3))


def global_certificate(module, x, y, norm):
    """The global Lipschitz certificate: (certified radii, pair bounds L[y, j]); (None, None) when unavailable."""
    try:
        from certify.lipschitz.certificate import certified_radii, network_bound
        from certify.lipschitz.network import pair_bounds

        analysis = network_bound(module, x.shape[1:], norm=norm)
        return certified_radii(module, x, y, analysis), pair_bounds(analysis)
    except Exception:  # noqa: BLE001 - the baseline column is optional
        return None, None


def digits(alpha_steps: int, device: str) -> None:
    module = to_torch(onnx.load(ROOT / "examples" / "digits_mlp.onnx"))
    data = np.load(ROOT / "examples" / "digits_test.npz")
    x, y = data["x"], data["y"]
    certify_samples(module, x[:2], y[:2], 0.01, device=device)  # warm-up: first use of torch.func loads modules
    runner = AttackRunner(module, Box(0.0, 1.0), device=torch.device(device))
    header = ["norm", "eps", "clean"] + [f"{m} %" for m in METHODS] + ["best %", "global %", "PGD %", "wrong"]
    header += [f"{m} ms" for m in METHODS]
    print(f"digits MLP, {len(y)} test samples")
    print(" | ".join(header))
    for norm, eps in DIGITS_SETTINGS:
        radii, pairs = global_certificate(module, x, y, norm)
        v = certify_samples(module, x, y, eps, norm, skip_certified=False, alpha_steps=alpha_steps, device=device,
                            global_pairs=pairs)
        adv = runner.run(build_attack("pgd", steps=100, restarts=3), torch.tensor(x), torch.tensor(y), norm, eps)
        robust = (runner.predict(adv).numpy() == y)
        wrong = int((v.any_certified & ~robust).sum())
        glob = None if radii is None else float((radii >= eps).mean())
        cells = [norm, f"{eps:g}", f"{100 * v.correct.mean():.1f}"]
        cells += [f"{100 * v.accuracy(m):.1f}" for m in METHODS]
        cells += [f"{100 * v.accuracy():.1f}", "n/a" if glob is None else f"{100 * glob:.1f}",
                  f"{100 * robust.mean():.1f}", str(wrong)]
        cells += [f"{v.ms_per_sample(m):.2f}" for m in METHODS]
        print(" | ".join(cells))
        if norm == "linf" and eps == 0.05:
            print("  local layerwise bounds (node: global upper, local mean, local max):")
            for row in v.layers:
                print(f"    {row.node} ({row.op_type}): {row.global_upper:.3f}, {row.local_mean:.3f}, "
                      f"{row.local_max:.3f}")


def read_vnnlib(path: Path) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Input box (lo, hi) and the output rows ``(a, b)`` meaning ``y_a - y_b > 0`` must hold (each disjunct of the
    negated property ``y_b >= y_a`` is one row). Only the competition's simple robustness form is read."""
    text = path.read_text()
    lo, hi = {}, {}
    for op, i, value in re.findall(r"\(assert \((<=|>=) X_(\d+) ([-+0-9.eE]+)\)\)", text):
        (hi if op == "<=" else lo)[int(i)] = float(value)
    n = max(lo) + 1
    rows = []
    for op, a, b in re.findall(r"\(and \((<=|>=) Y_(\d+) Y_(\d+)\)\)", text):
        a, b = int(a), int(b)
        rows.append((b, a) if op == ">=" else (a, b))  # ">= Y_a Y_b" violates "y_b > y_a"
    if len(lo) != n or len(hi) != n or not rows:
        raise ValueError(f"{path.name}: not a simple box robustness property")
    return np.array([lo[i] for i in range(n)]), np.array([hi[i] for i in range(n)]), rows


def box_pgd(module, lo, hi, spec, steps=60, restarts=3, seed=0) -> bool:
    """Whether PGD finds a point of the box where some spec row is <= 0 (a counterexample)."""
    gen = torch.Generator().manual_seed(seed)
    lo32, hi32 = torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)
    for _ in range(restarts):
        x = lo32 + torch.rand(lo32.shape, generator=gen) * (hi32 - lo32)
        for i in range(steps):
            x.requires_grad_(True)
            out = module(x).reshape(1, -1)
            worst = (spec * out).sum(-1).min()
            if worst.item() <= 0:
                return True
            (grad,) = torch.autograd.grad(worst, x)
            step = (hi32 - lo32) * (0.5 * (1 - i / steps) + 0.02)
            x = torch.minimum(torch.maximum(x.detach() - step * grad.sign(), lo32), hi32)
    return False


def vnncomp(alpha_steps: int, device: str, nets: str = "") -> None:
    verdicts = list(csv.DictReader(open(VNNCOMP / "verdicts.csv")))
    groups: dict[tuple, list] = {}
    for row in verdicts:
        if row["benchmark"] == "acasxu" or nets not in row["onnx"]:
            continue
        eps = re.search(r"_(0\.0\d+)\.vnnlib$", row["vnnlib"])
        key = (row["onnx"], eps.group(1) if eps else "all")
        groups.setdefault(key, []).append(row)
    print("\nVNN-COMP 2021 development instances (exact property boxes)")
    print("net | eps | instances | holds | ibp | crown | alpha-crown | PGD falsified | wrong | s/instance")
    totals = np.zeros(7, dtype=np.int64)
    for (net, eps), rows in sorted(groups.items()):
        module = to_torch(onnx.load(VNNCOMP / net))
        graph = float64_graph(module, device)
        shape = module.shapes.get(module.input_names[0])
        shape = tuple(d or 1 for d in shape)
        counts = np.zeros(7, dtype=np.int64)
        seconds = 0.0
        for row in rows:
            lo, hi, pairs = read_vnnlib(VNNCOMP / row["vnnlib"])
            outputs = 10
            spec = torch.zeros((len(pairs), 1, outputs), dtype=torch.float64)
            for k, (a, b) in enumerate(pairs):
                spec[k, 0, a], spec[k, 0, b] = 1.0, -1.0
            region = Region.box(torch.tensor(lo.reshape(shape)), torch.tensor(hi.reshape(shape)))
            began = time.monotonic()
            ibp = Propagation(graph, region, "ibp").lower(spec)
            crown = Propagation(graph, region, "crown")
            low = crown.lower(spec)
            if bool((low <= 0).any()):
                tuned = Propagation(graph, region, "crown", alpha_steps=alpha_steps)
                alpha = torch.maximum(tuned.lower(spec), low)
            else:
                alpha = low
            seconds += time.monotonic() - began
            certified = [bool((b > 0).all()) for b in (ibp, low, alpha)]
            falsified = box_pgd(module, lo.reshape(shape), hi.reshape(shape), spec[:, 0].float())
            holds = row["verdict"] == "holds"
            wrong = any(certified) and not holds
            counts += np.array([1, holds, *certified, falsified, wrong])
            if wrong or (falsified and any(certified)):
                print(f"  !! {row['vnnlib']}: verdict {row['verdict']}, certified {certified}, falsified {falsified}")
        totals += counts
        cells = " | ".join(str(int(c)) for c in counts)
        print(f"{Path(net).stem} | {eps} | {cells} | {seconds / len(rows):.2f}")
    print("total | | " + " | ".join(str(int(c)) for c in totals) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits only, 10 alpha-CROWN steps")
    parser.add_argument("--alpha-steps", type=int, default=40)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=("digits", "vnncomp"), help="run one of the two tables")
    parser.add_argument("--nets", default="", help="VNN-COMP networks whose path contains this text")
    args = parser.parse_args()
    steps = 10 if args.quick else args.alpha_steps
    if args.only != "vnncomp":
        digits(steps, args.device)
    if not args.quick and args.only != "digits" and VNNCOMP.exists():
        vnncomp(steps, args.device, args.nets)


if __name__ == "__main__":
    main()
