"""Fixed cost of the command line, and the effect of lipcert's thread setting (certify/threads.py).

Each command runs as a fresh process, as a user runs it; the time is the median wall time of ``--runs`` runs.
Columns: ``spinning`` runs with ``OMP_WAIT_POLICY=`` (an empty value: libgomp keeps its default spinning and prints
a warning, i.e. torch as lipcert ran it before it set anything); ``passive`` with the variable unset, so lipcert
sets ``PASSIVE`` itself (for the bare ``import torch`` it is set explicitly); ``passive - torch`` is the command's
cost beyond a bare ``python -c "import torch"``. Goal: inspect and bounds on the digits model within 1 s of it.
CPU seconds are given beside wall seconds: on a machine shared with other work they vary far less.

``--load N`` runs N CPU-burning processes during the measurements (killed at the end) to see a loaded machine;
``--root DIR`` times another checkout of lipcert (e.g. the previous release) with this script.

    python benchmarks/bench_cli.py [--runs 3] [--load 0] [--certify] [--root DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIPCERT = [sys.executable, "-m", "certify"]
GOAL_S = 1.0
# The commands whose time is fixed cost (start-up, loading, one small bound): the 1 s goal applies to them. With
# every certifier, ``bounds --data`` also certifies 450 samples by bound propagation: work, not fixed cost.
FIXED_COST = ("lipcert inspect digits", "lipcert bounds digits", "lipcert bounds digits --data (global)")


def commands(root: str, with_certify: bool) -> list[tuple[str, list[str]]]:
    model = os.path.join(root, "examples", "digits_mlp.onnx")
    data = os.path.join(root, "examples", "digits_test.npz")
    rows = [
        ("import torch", [sys.executable, "-c", "import torch"]),
        ("lipcert --help", [*LIPCERT, "--help"]),
        ("lipcert inspect digits", [*LIPCERT, "inspect", model]),
        ("lipcert bounds digits", [*LIPCERT, "bounds", model]),
        ("lipcert bounds digits --data (global)", [*LIPCERT, "bounds", model, "--data", data, "--certifiers",
                                                   "global"]),
        ("lipcert bounds digits --data (all)", [*LIPCERT, "bounds", model, "--data", data]),
    ]
    if with_certify:
        rows.append(("lipcert certify digits (quick attacks)",
                     [*LIPCERT, "certify", model, "--data", data, "--samples", "100", "--norm", "l2,linf",
                      "--eps", "0.05,0.1", "-o", os.devnull]))
    return rows


def timed(argv: list[str], env: dict, runs: int, root: str) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds (user + system) of the process."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(argv, env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return statistics.median(walls), statistics.median(cpus)


def environments(root: str, bare_torch: bool) -> dict[str, dict]:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    base["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)  # root first
    passive = dict(base, OMP_WAIT_POLICY="PASSIVE") if bare_torch else base
    return {"spinning": dict(base, OMP_WAIT_POLICY=""), "passive": passive}


def burn(deadline: float) -> None:
    while time.monotonic() < deadline:
        pass


@contextlib.contextmanager
def cpu_load(n: int, max_s: float = 3600.0):
    """``n`` CPU-burning processes for the duration of the block (each stops by itself after ``max_s``)."""
    burners = [multiprocessing.Process(target=burn, args=(time.monotonic() + max_s,), daemon=True) for _ in range(n)]
    for b in burners:
        b.start()
    try:
        yield
    finally:
        for b in burners:
            b.terminate()
            b.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--load", type=int, default=0, help="CPU-burning background processes during the runs")
    parser.add_argument("--certify", action="store_true", help="also time a whole certify run (bounds + attacks)")
    parser.add_argument("--root", default=ROOT, help="the lipcert checkout to time (default: this one)")
    args = parser.parse_args()
    root = os.path.abspath(args.root)
    with cpu_load(args.load):
        rows = []
        for name, argv in commands(root, args.certify):
            envs = environments(root, bare_torch=name == "import torch")
            rows.append((name, {label: timed(argv, env, args.runs, root) for label, env in envs.items()}))
    torch_wall, torch_cpu = rows[0][1]["passive"]
    print(f"lipcert at {root}; cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, background burners "
          f"{args.load}, median of {args.runs} runs; seconds, wall and CPU (user + system)")
    print(f"{'command':<40} {'spinning':>17} {'passive':>17} {'passive - torch':>17}  goal (wall)")
    print(f"{'':<40} {'wall':>8} {'cpu':>8} {'wall':>8} {'cpu':>8} {'wall':>8} {'cpu':>8}")
    for name, t in rows:
        (sw, sc), (pw, pc) = t["spinning"], t["passive"]
        extra = pw - torch_wall
        goal = "" if name not in FIXED_COST else (
            "ok" if extra <= GOAL_S else f"over {GOAL_S:g} s")
        print(f"{name:<40} {sw:>8.2f} {sc:>8.2f} {pw:>8.2f} {pc:>8.2f} {extra:>8.2f} {pc - torch_cpu:>8.2f}  {goal}")


if __name__ == "__main__":
    main()
