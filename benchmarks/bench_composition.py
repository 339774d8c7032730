"""Composed network bound against the plain product and the empirical lower bound, on conv nets whose constant is
not trivially 0: the small trained CNN of ``examples/digits_cnn.onnx`` and AlexNet, VGG-19 and ResNet-50 with random
He-initialised weights (``he_models``; the light test models' constant weights make the true constant 0, so they
cannot judge tightness). One process per model (its own peak RSS).

    nice python benchmarks/bench_composition.py [--model digits_cnn|alexnet|vgg19|resnet50 ...] [--budget 120]

Columns: composed and product upper bounds (guaranteed), the empirical lower bound (an estimate from below: the
largest Jacobian norm at 16 random points in [0, 1], then secant ascent within ``--budget`` seconds), the ratios,
bound and lower-bound wall times (and the bound's CPU seconds, steadier on a shared machine), peak RSS, and each
chain bounded jointly with its product of layer bounds.
"""

from __future__ import annotations

# isort: off
import passive_threads  # noqa: F401  (OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP)
# isort: on

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODELS = ("digits_cnn", "alexnet", "vgg19", "resnet50")


def load(name: str):
    import certify

    if name == "digits_cnn":
        with open(os.path.join(ROOT, "examples", "digits_cnn.onnx"), "rb") as f:
            data = f.read()
    else:
        from he_models import he_model

        data = he_model(name).SerializeToString()
    return certify.to_torch(certify.load_onnx(data))


def run_one(name: str, budget: float) -> None:
    import torch

    from certify.lipschitz import empirical, network_bound

    graph = load(name)
    shape = tuple(graph.shapes[graph.input_names[0]][1:])
    started, cpu = time.perf_counter(), time.process_time()
    analysis = network_bound(graph, shape)
    bound_s, bound_cpu = time.perf_counter() - started, time.process_time() - cpu
    composed, product = analysis.composed[analysis.output_name], analysis.product[analysis.output_name]
    points = torch.rand((16, *shape), generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    lower = empirical.lower_bound(graph, points, budget_s=budget)
    lower_s = time.perf_counter() - started
    low = lower["lower"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{name:11} {str(list(shape)):15} {composed:11.5g} {product:11.5g} {composed / product:9.3g} "
          f"{low:10.5g} {composed / low:10.3g} {bound_s:8.1f} {bound_cpu:8.1f} {lower_s:8.1f} {peak:8.0f}  "
          f"{lower['found_by']}",
          flush=True)
    for chain in analysis.chains:
        if chain.upper is None:
            continue
        layers = math.prod(item.bound.upper for item in chain.items)
        print(f"    {chain.method:20} {chain.input} -> {chain.output}: {chain.upper:.5g} (product of its items "
              f"{layers:.5g}, {chain.upper / layers:.3g}x), {chain.ms / 1e3:.1f} s")
    print(json.dumps({"model": name, "composed": composed, "product": product, "lower": low, "bound_s": bound_s,
                      "bound_cpu_s": bound_cpu,
                      "lower_s": lower_s, "peak_rss_mib": peak, "load_average": os.getloadavg()[0]}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=MODELS, help="repeatable; default: all")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds of secant ascent per model")
    parser.add_argument("--inline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    models = args.model or list(MODELS)
    if args.inline:
        run_one(models[0], args.budget)
        return
    print(f"load average {os.getloadavg()[0]:.1f} (2 shared cores)")
    print(f"{'model':11} {'input':15} {'composed':>11} {'product':>11} {'comp/prod':>9} {'lower':>10} "
          f"{'comp/lower':>10} {'bound s':>8} {'cpu s':>8} {'lower s':>8} {'RSS MiB':>8}  lower found by")
    for name in models:
        subprocess.run([sys.executable, os.path.abspath(__file__), "--inline", "--model", name, "--budget",
                        str(args.budget)], check=False)


if __name__ == "__main__":
    main()
