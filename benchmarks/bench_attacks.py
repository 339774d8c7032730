"""Attack strength and speed against torchattacks (a benchmark-only reference), and PGD's per-step overhead.

Both sides attack the same models, data and eps with the same iteration budgets, once per seed (robust accuracy is
the mean over seeds, time the fastest run); one function checks every
returned example for both (misclassified, inside the box, inside the eps-ball measured in float64, with a 1e-6
relative slack granted to the reference, which does not round inward). Goals: our robust accuracy at most the
reference's + 0.5 point, our time at most the reference's; PGD time per step / one forward+backward <= 1.15.

    pip install --no-deps torchattacks==3.5.1
    python benchmarks/bench_attacks.py [--samples 200] [--threads 1] [--repeats 3] [--only PGD]
"""

from __future__ import annotations

# isort: off
import passive_threads  # noqa: F401  (OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP)
# isort: on

import argparse
import time

import numpy as np
import torch
from sklearn.datasets import load_digits

from certify.attacks import Box, build_attack
from certify.attacks.batching import AttackRunner
from certify.attacks.box import distances
from certify.attacks.losses import cross_entropy
from certify.attacks.steps import input_gradient

ACC_SLACK = 0.005
OVERHEAD_GOAL = 1.15


def digits_images():
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return x, data.target.astype(np.int64)


def make_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 10))
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(32 * 16, 128), torch.nn.ReLU(),
                              torch.nn.Linear(128, 10))
    return {"mlp": mlp, "cnn": cnn}


def train(model, x, y, epochs: int = 30):
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.tensor(x), torch.tensor(y)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=g).split(128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def robust_accuracy(model, x, y, x_adv, norm, eps, slack: float = 0.0) -> float:
    """Fraction of samples not broken: a break must be misclassified, in [0, 1] and within eps (float64)."""
    with torch.no_grad():
        wrong = model(x_adv).argmax(1) != y
    inside = (x_adv >= 0).flatten(1).all(1) & (x_adv <= 1).flatten(1).all(1)
    within = distances(x_adv, x, norm) <= eps * (1 + slack)
    return float((~(wrong & inside & within)).float().mean())


def cases(eps_linf: float, eps_l2: float, steps: int):
    """(label, norm, eps, our attack, reference constructor) for each side-by-side comparison."""
    import torchattacks as ta

    return [
        ("PGD-Linf", "linf", eps_linf, ("pgd", {"steps": steps}),
         lambda m: ta.PGD(m, eps=eps_linf, alpha=2.5 * eps_linf / steps, steps=steps)),
        ("PGD-L2", "l2", eps_l2, ("pgd", {"steps": steps}),
         lambda m: ta.PGDL2(m, eps=eps_l2, alpha=2.5 * eps_l2 / steps, steps=steps)),
        ("APGD-CE-Linf", "linf", eps_linf, ("apgd-ce", {"steps": 100}),
         lambda m: ta.APGD(m, norm="Linf", eps=eps_linf, steps=100, loss="ce")),
        ("APGD-DLR-Linf", "linf", eps_linf, ("apgd-dlr", {"steps": 100}),
         lambda m: ta.APGD(m, norm="Linf", eps=eps_linf, steps=100, loss="dlr")),
        ("APGD-CE-L2", "l2", eps_l2, ("apgd-ce", {"steps": 100}),
         lambda m: ta.APGD(m, norm="L2", eps=eps_l2, steps=100, loss="ce")),
        ("Square-Linf", "linf", eps_linf, ("square", {"queries": 1000}),
         lambda m: ta.Square(m, norm="Linf", eps=eps_linf, n_queries=1000)),
        ("Square-L2", "l2", eps_l2, ("square", {"queries": 1000}),
         lambda m: ta.Square(m, norm="L2", eps=eps_l2, n_queries=1000)),
        # The reference runs one c for 100 steps; ours gets the same budget (one search step of 100 steps).
        ("CW-L2", "l2", eps_l2, ("cw", {"steps": 100, "binary_steps": 1}),
         lambda m: ta.CW(m, c=1, kappa=0, steps=100, lr=0.01)),
        ("DeepFool-L2", "l2", eps_l2, ("deepfool", {"steps": 50}),
         lambda m: ta.DeepFool(m, steps=50, overshoot=0.02)),
    ]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def compare(models, x, y, args) -> list[dict]:
    rows = []
    for model_name, model in models.items():
        for label, norm, eps, (name, params), reference in cases(args.eps_linf, args.eps_l2, args.steps):
            if args.only and args.only.lower() not in label.lower():
                continue
            ours = build_attack(name, **params)
            ref = reference(model)
            eps_arg = None if ours.minimal else eps
            acc_ours, acc_ref, t_ours, t_ref = [], [], [], []
            for seed in range(args.repeats):  # interleaved, so load changes on the machine hit both alike
                runner = AttackRunner(model, Box(0.0, 1.0), device=torch.device("cpu"), seed=seed, batch_size=len(x))
                x_ours, t = timed(lambda: runner.run(ours, x, y, norm, eps_arg))  # noqa: B023 (called at once)
                t_ours.append(t)
                acc_ours.append(robust_accuracy(model, x, y, x_ours, norm, eps))
                torch.manual_seed(seed)  # the reference draws its random starts from the global generator
                x_ref, t = timed(lambda: ref(x, y))  # noqa: B023
                t_ref.append(t)
                acc_ref.append(robust_accuracy(model, x, y, x_ref, norm, eps, slack=1e-6))
            # Robust accuracy: mean over the seeds (single runs differ by a sample or two); time: the fastest run.
            acc_ours, acc_ref = float(np.mean(acc_ours)), float(np.mean(acc_ref))
            t_ours, t_ref = min(t_ours), min(t_ref)
            rows.append({"model": model_name, "attack": label, "eps": eps, "ours": acc_ours, "ref": acc_ref,
                         "t_ours": t_ours, "t_ref": t_ref,
                         "strength": "ok" if acc_ours <= acc_ref + ACC_SLACK else "MISS",
                         "speed": "ok" if t_ours <= t_ref else "MISS"})
            print_row(rows[-1])
    return rows


def print_header():
    print(f"{'model':5} {'attack':14} {'eps':>5} | {'robust acc ours':>15} {'ref':>6} {'':4} | "
          f"{'time ours s':>11} {'ref s':>8} {'':4}")
    print("-" * 86)


def print_row(r):
    print(f"{r['model']:5} {r['attack']:14} {r['eps']:5.2f} | {r['ours']:15.3f} {r['ref']:6.3f} {r['strength']:4} | "
          f"{r['t_ours']:11.3f} {r['t_ref']:8.3f} {r['speed']:4}", flush=True)


def overhead(models, x, y, steps: int = 50) -> None:
    """PGD (early stopping off, so every step runs on the whole batch) vs one forward + backward."""
    print(f"\n{'model':5} {'batch':>5} | {'fwd+bwd ms':>10} {'PGD step ms':>11} {'ratio':>6} (goal <= {OVERHEAD_GOAL})")
    print("-" * 60)
    for model_name, model in models.items():
        xb, yb = x, y
        runner = AttackRunner(model, Box(0.0, 1.0), device=torch.device("cpu"), seed=0, batch_size=len(xb))
        pgd = build_attack("pgd", steps=steps, early_stop=False)
        for _ in range(3):
            input_gradient(model, xb, yb, cross_entropy)
        ratios = []
        for _ in range(3):  # interleaved, so load changes on the machine hit both alike
            t0 = time.perf_counter()
            for _ in range(steps):
                input_gradient(model, xb, yb, cross_entropy)
            t_fb = (time.perf_counter() - t0) / steps
            t0 = time.perf_counter()
            runner.run(pgd, xb, yb, "linf", 0.1)
            t_step = (time.perf_counter() - t0) / steps
            ratios.append((t_step / t_fb, t_fb, t_step))
        ratio, t_fb, t_step = min(ratios)
        print(f"{model_name:5} {len(xb):5} | {t_fb * 1e3:10.3f} {t_step * 1e3:11.3f} {ratio:6.3f} "
              f"{'ok' if ratio <= OVERHEAD_GOAL else 'MISS'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--eps-linf", type=float, default=0.1)
    parser.add_argument("--eps-l2", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="seeds per attack (interleaved runs)")
    parser.add_argument("--only", default="", help="run only the attacks whose label contains this text")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y = digits_images()
    n_train = 1400
    models = {name: train(m, x[:n_train], y[:n_train]) for name, m in make_models().items()}
    xt, yt = torch.tensor(x[n_train:n_train + args.samples]), torch.tensor(y[n_train:n_train + args.samples])
    for name, m in models.items():
        with torch.no_grad():
            print(f"{name}: clean accuracy {float((m(xt).argmax(1) == yt).float().mean()):.3f} on {len(xt)} samples")
    print(f"threads={args.threads} repeats={args.repeats} eps_linf={args.eps_linf} eps_l2={args.eps_l2}\n")
    print_header()
    rows = compare(models, xt, yt, args)
    misses = [r for r in rows if "MISS" in (r["strength"], r["speed"])]
    print(f"\nstrength ok {sum(r['strength'] == 'ok' for r in rows)}/{len(rows)}, "
          f"speed ok {sum(r['speed'] == 'ok' for r in rows)}/{len(rows)}")
    overhead(models, xt, yt)
    return 1 if misses else 0


if __name__ == "__main__":
    raise SystemExit(main())
