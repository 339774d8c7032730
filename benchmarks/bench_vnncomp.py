"""VNN-COMP 2021 development set: every instance of ``verdicts.csv`` decided with a time limit per instance.

Per benchmark: holds proved, violations found (each counterexample confirmed in onnxruntime), unknown, wrong (a
verdict opposite to the majority's: must be 0) and the median time per instance (model loading excluded). The
time limit applies to the decision itself; each model is loaded once. Goals (issue 13): 0 wrong, every violation
found, at least 80% of the ``holds`` instances proved within 60 s on CPU.

    python benchmarks/bench_vnncomp.py [--timeout 60] [--benchmark mnistfc,acasxu,oval21] [--dev DIR] [--only S]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time

import torch

from certify.decide import load_decider
from certify.vnnlib import read_vnnlib

DEFAULT_DEV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "vnncomp2021-dev")
COLUMNS = ("holds proved", "violations found", "unknown", "wrong", "median s")


def run(dev: str, benchmarks: set[str], timeout: float, verbose: bool, only: list[str] | None = None
        ) -> dict[str, list[tuple]]:
    rows: dict[str, list[tuple]] = {}
    deciders = {}
    with open(os.path.join(dev, "verdicts.csv")) as f:
        instances = [r for r in csv.DictReader(f) if r["benchmark"] in benchmarks
                     and (not only or any(o in f"{r['onnx']}:{r['vnnlib']}" for o in only))]
    for r in instances:
        prop = read_vnnlib(os.path.join(dev, r["vnnlib"]))
        if r["onnx"] not in deciders:
            deciders[r["onnx"]] = load_decider(os.path.join(dev, r["onnx"]), prop)
        start = time.monotonic()
        verdict = deciders[r["onnx"]].decide(prop, timeout)
        seconds = time.monotonic() - start
        rows.setdefault(r["benchmark"], []).append((r["verdict"], verdict.result, seconds))
        if verbose:
            print(f"  {r['onnx']:<42} {r['vnnlib'][-44:]:<44} expected {r['verdict']:<8} got {verdict.result:<8} "
                  f"{verdict.method:<11} {seconds:6.1f} s {_brief(verdict.stats)}", flush=True)
    return rows


def _brief(stats: dict) -> str:
    """The search's own numbers of one instance (domains bounded, proved, the Relu search's end and seconds)."""
    return " ".join(f"{k}={v}" for k, v in stats.items())


def summary(results: list[tuple]) -> tuple:
    proved = sum(1 for want, got, _ in results if got == want == "holds")
    found = sum(1 for want, got, _ in results if got == want == "violated")
    unknown = sum(1 for _, got, _ in results if got == "unknown")
    wrong = sum(1 for want, got, _ in results if got != "unknown" and got != want)
    holds = sum(1 for want, _, _ in results if want == "holds")
    violated = len(results) - holds
    median = statistics.median(s for _, _, s in results)
    return f"{proved}/{holds}", f"{found}/{violated}", str(unknown), str(wrong), f"{median:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per instance (default 60)")
    parser.add_argument("--benchmark", default="mnistfc,acasxu,oval21")
    parser.add_argument("--dev", default=os.path.normpath(DEFAULT_DEV))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quiet", action="store_true", help="only the table")
    parser.add_argument("--only", action="append", help="instances whose 'onnx:vnnlib' contains this (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = run(args.dev, set(args.benchmark.split(",")), args.timeout, not args.quiet, args.only)
    print(f"\nVNN-COMP 2021 dev set, {args.timeout:g} s per instance, {args.threads} thread(s)")
    header = f"{'benchmark':<10} " + " ".join(f"{c:>16}" for c in COLUMNS)
    print(header)
    print("-" * len(header))
    everything = []
    for name, res in results.items():
        everything += res
        print(f"{name:<10} " + " ".join(f"{v:>16}" for v in summary(res)))
    if everything:
        print(f"{'total':<10} " + " ".join(f"{v:>16}" for v in summary(everything)))


if __name__ == "__main__":
    main()
