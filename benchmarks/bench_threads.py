"""How lipcert's thread setting (``OMP_WAIT_POLICY=PASSIVE``, certify/threads.py) changes the time of real work.

OpenMP reads the variable once, when torch loads it, so every measurement runs in a fresh process with the policy in
its environment: ``default`` (an empty value: libgomp's default, spinning a while after each parallel region, i.e.
torch as lipcert ran it before it set anything), ``ACTIVE`` (spin always) and ``PASSIVE`` (sleep when idle). Rows:

- ``forward``: a converted model at batch 1 (onnx's light ResNet-50 test model, median of 10 calls, per call);
- ``attack``: PGD (l-inf, eps 0.1) through ``certify.robustness.evaluate`` on the 450 digits samples;
- ``lipcert bounds``: the whole command on the digits example, as a user runs it (import included).

The first two run in one process per policy and run, and exclude imports and conversion. Each cell is the median
over ``--runs`` processes of wall and CPU seconds (user + system of the process, all its threads: spinning shows up
as CPU). ``--load N`` runs N CPU-burning processes during the measurements (stopped at the end, and each by itself
after an hour at most).

    python benchmarks/bench_threads.py [--runs 3] [--load 0] [--policies default,ACTIVE,PASSIVE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bench_cli import ROOT, cpu_load, timed

POLICIES = ("default", "ACTIVE", "PASSIVE")
DIGITS = os.path.join(ROOT, "examples", "digits_mlp.onnx")
DIGITS_DATA = os.path.join(ROOT, "examples", "digits_test.npz")


def _forward() -> tuple[float, float]:
    import onnx
    import torch

    import certify

    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "light_resnet50.onnx")
    module = certify.to_torch(certify.load_onnx(path)).eval()
    x = torch.rand(1, 3, 224, 224)
    walls, cpus = [], []
    with torch.no_grad():
        for i in range(11):
            wall, cpu = time.perf_counter(), time.process_time()
            module(x)
            if i:  # after a warm-up call
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def _attack() -> tuple[float, float]:
    import numpy as np

    import certify
    from certify.robustness import evaluate

    module = certify.to_torch(certify.load_onnx(DIGITS)).eval()
    data = np.load(DIGITS_DATA)
    wall, cpu = time.perf_counter(), time.process_time()
    evaluate(module, data["x"], data["y"], norms=("linf",), epsilons=(0.1,), attacks=["pgd"],
             large_eps_check=False, examples=0)
    return time.perf_counter() - wall, time.process_time() - cpu


WORKLOADS = {"forward": _forward, "attack": _attack}


def _env(policy: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_WAIT_POLICY="" if policy == "default" else policy)
    env.pop("OMP_DISPLAY_ENV", None)
    return env


def in_child(policy: str, runs: int) -> dict[str, tuple[float, float]]:
    """Per in-process workload: median wall and CPU seconds over ``runs`` fresh processes."""
    results = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, __file__, "--child"], env=_env(policy), cwd=ROOT, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise SystemExit(f"workloads ({policy}) failed: {proc.stderr.strip()[-500:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {name: (statistics.median(r[name][0] for r in results), statistics.median(r[name][1] for r in results))
            for name in WORKLOADS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--load", type=int, default=0, help="CPU-burning background processes during the runs")
    parser.add_argument("--policies", default=",".join(POLICIES), help="OMP_WAIT_POLICY values, comma-separated; "
                        "'default' is libgomp's own (the last one is the reference of the ratio column)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({name: run() for name, run in WORKLOADS.items()}))
        return
    policies = args.policies.split(",")
    bounds = [sys.executable, "-m", "certify", "bounds", DIGITS, "--data", DIGITS_DATA]
    with cpu_load(args.load):
        cells = {policy: in_child(policy, args.runs) for policy in policies}
        for policy in policies:
            cells[policy]["lipcert bounds"] = timed(bounds, _env(policy), args.runs, ROOT)
    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, background burners {args.load}, "
          f"median of {args.runs} processes; seconds, wall and CPU (user + system)")
    first, last = policies[0], policies[-1]
    print(f"{'workload':<16}" + "".join(f"{p:>18}" for p in policies) + f"{first + '/' + last:>17}")
    print(f"{'':<16}" + f"{'wall':>9}{'cpu':>9}" * len(policies) + f"{'wall':>9}{'cpu':>8}")
    for name in (*WORKLOADS, "lipcert bounds"):
        (fw, fc), (lw, lc) = cells[first][name], cells[last][name]
        print(f"{name:<16}" + "".join(f"{cells[p][name][0]:>9.3f}{cells[p][name][1]:>9.3f}" for p in policies)
              + f"{fw / lw:>8.2f}x{fc / lc:>7.2f}x")


if __name__ == "__main__":
    main()
