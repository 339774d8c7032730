"""MLP Lipschitz bounds side by side: our composed bound vs eclipse-nn's ECLipsE_Fast vs the spectral product.

Run: ``python benchmarks/bench_mlp_bounds.py`` (benchmark-only dependency: ``pip install eclipse-nn==0.1.7``,
which needs cvxpy; without it that column is skipped). Each MLP is exported to ONNX and converted, and
``certify.lipschitz.network_bound`` bounds the converted graph (per-layer table, fusion, ECLipsE-Fast with
floating-point margins); ``ecl core`` is our ECLipsE-Fast alone on the same float64 weights. Times are wall-clock
seconds on this machine, ``cpu`` the process's CPU seconds (all threads: steadier than wall time on a shared machine),
``cpu x`` ours over the core's; ``ours/ecl`` is our bound divided by eclipse-nn's (1.0 = as tight).
"""

from __future__ import annotations

# isort: off
import passive_threads  # noqa: F401  (OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP)
# isort: on

import argparse
import io
import os
import time

import torch
from torch import nn

import certify
from certify.lipschitz import network_bound
from certify.lipschitz.eclipse import eclipse_fast

SIZES = {
    "10-64-64-5": [10, 64, 64, 5],
    "784-128-128-10": [784, 128, 128, 10],
    "784-256x3-10": [784, 256, 256, 256, 10],
    "784-1024x8-10": [784] + [1024] * 8 + [10],
}


def make_mlp(sizes: list[int], init: str, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(n_in, n_out)
        if init == "normal":  # N(0, 1/n_in)
            nn.init.normal_(linear.weight, 0.0, n_in**-0.5)
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def convert(model: nn.Module, n_in: int):
    buffer = io.BytesIO()
    torch.onnx.export(model, torch.randn(1, n_in), buffer, dynamo=False, opset_version=13)
    return certify.to_torch(certify.load_onnx(buffer.getvalue()))


def eclipse_nn(model: nn.Module):
    try:
        from eclipse_nn import LipConstEstimator
    except ImportError:
        return None, None
    import copy

    started = time.perf_counter()
    value = LipConstEstimator(model=copy.deepcopy(model).double()).estimate("ECLipsE_Fast")
    return float(value), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="architectures to run (default: all)")
    parser.add_argument("--no-eclipse-nn", action="store_true", help="skip the eclipse-nn column")
    args = parser.parse_args()
    header = (f"{'mlp':<16} {'init':<7} {'product':>10} {'ours':>10} {'s':>7} {'cpu':>7} {'ecl core':>10} {'s':>7} "
              f"{'cpu':>7} {'cpu x':>6} {'eclipse-nn':>11} {'s':>7} {'ours/ecl':>9} {'ours/prod':>9}")
    print(f"load average {os.getloadavg()[0]:.1f}")
    # first calls into torch.linalg, scipy's Lanczos and the exporter are slow
    warm = make_mlp([10, 80, 80, 3], "default", seed=1)
    network_bound(convert(warm, 10), (10,))
    if not args.no_eclipse_nn:
        eclipse_nn(warm)
    print(header)
    print("-" * len(header))
    for name, sizes in SIZES.items():
        if args.only and name not in args.only:
            continue
        for init in ("default", "normal"):
            model = make_mlp(sizes, init, seed=0)
            graph = convert(model, sizes[0])
            started, cpu = time.perf_counter(), time.process_time()
            analysis = network_bound(graph, (sizes[0],))
            ours_s, ours_cpu = time.perf_counter() - started, time.process_time() - cpu
            ours = analysis.composed[analysis.output_name]
            product = analysis.product[analysis.output_name]
            weights = [m.weight.detach().double() for m in model if isinstance(m, nn.Linear)]
            started, cpu = time.perf_counter(), time.process_time()
            core, _ = eclipse_fast(weights)
            core_s, core_cpu = time.perf_counter() - started, time.process_time() - cpu
            ecl, ecl_s = (None, None) if args.no_eclipse_nn else eclipse_nn(model)
            ratio = f"{ours / ecl:9.7f}" if ecl else f"{'-':>9}"
            ecl_txt = f"{ecl:11.5g} {ecl_s:7.2f}" if ecl else f"{'-':>11} {'-':>7}"
            print(f"{name:<16} {init:<7} {product:10.5g} {ours:10.5g} {ours_s:7.2f} {ours_cpu:7.2f} {core:10.5g} "
                  f"{core_s:7.2f} {core_cpu:7.2f} {ours_cpu / core_cpu:6.2f} {ecl_txt} {ratio} {ours / product:9.4f}",
                  flush=True)


if __name__ == "__main__":
    main()
