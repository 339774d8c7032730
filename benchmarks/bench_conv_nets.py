"""Whole conv nets: per conv layer upper / lower and time against a 100-step power iteration on the same layer,
the whole bound's wall and CPU time, composed / product / empirical lower, and peak RSS (one process per model).

Models: the light ImageNet nets shipped with onnx (AlexNet, VGG-19, ResNet-50; constant weights, so every kernel is
tap-separable) and the small trained CNN of ``examples/digits_cnn.onnx``.

    nice python benchmarks/bench_conv_nets.py [--model alexnet|vgg19|resnet50|digits_cnn ...] [--no-pi]
"""

from __future__ import annotations

# isort: off
import passive_threads  # noqa: F401  (OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP)
# isort: on

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODELS = ("digits_cnn", "alexnet", "vgg19", "resnet50")


def model_path(name: str) -> str:
    if name == "digits_cnn":
        return os.path.join(ROOT, "examples", "digits_cnn.onnx")
    import onnx

    light = {"alexnet": "light_bvlc_alexnet", "vgg19": "light_vgg19", "resnet50": "light_resnet50"}[name]
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", f"{light}.onnx")


def _power_iteration_ms(record) -> float:
    """Time of 100 power-iteration steps on the node's zero-padded convolution (the common estimate)."""
    from certify.lipschitz.conv import normalize_conv
    from certify.lipschitz.linear_norms import linear_operator_lower

    c = record.rule.conv
    geom = normalize_conv(record.rule.weight, record.ctx.in_shape, stride=c["stride"], padding=c["padding"],
                          dilation=c["dilation"], groups=c["groups"])
    started = time.perf_counter()
    linear_operator_lower(geom.apply, geom.input_shape, iters=100, seed=1)
    return (time.perf_counter() - started) * 1e3


def run_one(name: str, power: bool) -> None:
    import torch

    import certify
    from certify.lipschitz.certificate import certificate

    graph = certify.to_torch(certify.load_onnx(model_path(name)))
    shape = tuple(graph.shapes[graph.input_names[0]][1:])
    records = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = certificate(graph, shape, on_analysis=lambda a: records.extend(a.records))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(f"\n{name}: input {list(shape)}, torch threads={torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    head = (f"{'node':14} {'shape':18} {'upper':>11} {'lower':>11} {'up/lo':>8} {'ms':>8} {'pi100 ms':>9} {'x pi':>6}"
            "  method")
    print(head)
    print("-" * len(head))
    worst, slowest = 1.0, 0.0
    for record in records:
        if record.ctx.op_type != "Conv" or record.bound is None or record.bound.upper is None:
            continue
        b = record.bound
        ratio = b.ratio() or float("inf")
        worst = max(worst, ratio)
        pi_ms = _power_iteration_ms(record) if power else None
        times = b.ms / pi_ms if pi_ms else None
        if times is not None:
            slowest = max(slowest, times)
        print(f"{record.ctx.node[:14]:14} {str(list(record.ctx.out_shape))[:18]:18} {b.upper:11.5g} "
              f"{(b.lower or 0):11.5g} {ratio:8.5f} {b.ms:8.0f} {('-' if pi_ms is None else f'{pi_ms:9.0f}'):>9} "
              f"{('-' if times is None else f'{times:6.2f}'):>6}  {b.method}")
    net = result["network"]
    low = net["lower"]
    print("-" * len(head))
    print(f"whole bound: {wall:.1f} s wall, {cpu:.1f} s CPU; worst conv upper/lower {worst:.5f}"
          + (f"; slowest conv vs 100-step power iteration {slowest:.2f}x" if power else ""))
    composed, product = net["upper"], net["product"]
    print(f"composed {composed:.6g}  product {product:.6g}  composed/product {composed / product:.3g}  "
          f"empirical lower {low if low is None else f'{low:.6g}'}  composed/lower "
          f"{'-' if not low else f'{composed / low:.3g}'}  method: {net['method']}")
    for chain in net["chains"]:
        print(f"  chain {chain['nodes'][0]}..{chain['nodes'][-1]} ({len(chain['nodes'])} nodes): "
              f"upper {chain['upper']}, {chain['ms'] / 1000:.1f} s")
    slow = sorted((r for r in records if r.bound is not None), key=lambda r: -r.bound.ms)[:5]
    print("slowest nodes: " + ", ".join(f"{r.ctx.node} ({r.ctx.op_type}) {r.bound.ms / 1000:.1f} s" for r in slow))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB")
    print(json.dumps({"model": name, "wall_s": wall, "cpu_s": cpu, "composed": composed, "product": product,
                      "lower": low, "worst_ratio": worst, "peak_rss_mib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=MODELS, help="repeatable; default: all")
    parser.add_argument("--no-pi", action="store_true", help="skip the 100-step power iteration per conv layer")
    parser.add_argument("--inline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    models = args.model or list(MODELS)
    if args.inline:
        run_one(models[0], not args.no_pi)
        return
    for name in models:  # one process per model: its own peak RSS
        cmd = [sys.executable, os.path.abspath(__file__), "--inline", "--model", name] + (["--no-pi"] if args.no_pi
                                                                                           else [])
        subprocess.run(cmd, check=False)


if __name__ == "__main__":
    main()
