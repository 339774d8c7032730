"""Whole conv nets: per conv layer upper / lower and CPU time against a 100-step power iteration on the same layer,
the whole bound's wall and CPU time, composed / product / empirical lower, and peak RSS (one process per model).

Models: the light ImageNet nets shipped with onnx (AlexNet, VGG-19, ResNet-50; constant weights, so every kernel is
tap-separable) and the small trained CNN of ``examples/digits_cnn.onnx``. ``--random`` takes the light nets with
He-initialised weights instead (``benchmarks/he_models.py``): general kernels, the case that tightness and time goals
are measured on. Each conv row is printed (flushed) as soon as the layer is bounded,
so a run cut short still shows its rows; the power-iteration reference time is excluded from the whole-bound time.

    nice python benchmarks/bench_conv_nets.py [--model alexnet|vgg19|resnet50|digits_cnn ...] [--random] [--no-pi]
        [--lower-budget S]
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


def load_graph(name: str, random: bool):
    """The converted model: digits_cnn from examples/, a light net as shipped or with He weights (`he_models`)."""
    import certify

    if name == "digits_cnn":
        return certify.to_torch(certify.load_onnx(os.path.join(ROOT, "examples", "digits_cnn.onnx")))
    from he_models import he_model, light_path

    data = he_model(name).SerializeToString() if random else light_path(name)
    return certify.to_torch(certify.load_onnx(data))


def _power_iteration_cpu_ms(record) -> float:
    """CPU time of 100 power-iteration steps on the node's zero-padded convolution (the common estimate)."""
    from certify.lipschitz.conv import normalize_conv
    from certify.lipschitz.linear_norms import linear_operator_lower

    c = record.rule.conv
    geom = normalize_conv(record.rule.weight, record.ctx.in_shape, stride=c["stride"], padding=c["padding"],
                          dilation=c["dilation"], groups=c["groups"])
    started = time.process_time()
    linear_operator_lower(geom.apply, geom.input_shape, iters=100, seed=1)
    return (time.process_time() - started) * 1e3


def run_one(name: str, power: bool, random: bool, lower_budget: float) -> None:
    import torch

    from certify.lipschitz.certificate import certificate

    graph = load_graph(name, random)
    shape = tuple(graph.shapes[graph.input_names[0]][1:])
    print(f"\n{name}{' (He weights, benchmarks/he_models.py)' if random and name != 'digits_cnn' else ''}: input "
          f"{list(shape)}, torch threads={torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    head = (f"{'node':14} {'shape':18} {'upper':>11} {'lower':>11} {'up/lo':>8} {'ms':>8} {'cpu ms':>8} {'pi cpu':>8} "
            f"{'x pi':>6}  method")
    print(head)
    print("-" * len(head), flush=True)
    stats = {"worst": 1.0, "slowest": 0.0, "pi_wall": 0.0, "pi_cpu": 0.0, "stamp": time.process_time()}

    def on_record(record) -> None:
        # CPU time since the previous record: this node's bound (and any cheap node bounded in between)
        cpu_ms, stats["stamp"] = (time.process_time() - stats["stamp"]) * 1e3, time.process_time()
        if record.ctx.op_type != "Conv" or record.bound is None or record.bound.upper is None:
            return
        b = record.bound
        ratio = b.ratio() or float("inf")
        stats["worst"] = max(stats["worst"], ratio)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        pi_ms = _power_iteration_cpu_ms(record) if power else None
        stats["pi_wall"] += time.perf_counter() - wall0
        stats["pi_cpu"] += time.process_time() - cpu0
        stats["stamp"] = time.process_time()
        times = cpu_ms / pi_ms if pi_ms else None
        if times is not None:
            stats["slowest"] = max(stats["slowest"], times)
        print(f"{record.ctx.node[:14]:14} {str(list(record.ctx.out_shape))[:18]:18} {b.upper:11.5g} "
              f"{(b.lower or 0):11.5g} {ratio:8.5f} {b.ms:8.0f} {cpu_ms:8.0f} "
              f"{('-' if pi_ms is None else f'{pi_ms:8.0f}'):>8} "
              f"{('-' if times is None else f'{times:6.2f}'):>6}  {b.method}", flush=True)

    records = []
    certificate_module = sys.modules[certificate.__module__]
    analyse = certificate_module.analyse

    def streaming_analyse(*args, **kwargs):
        kwargs["on_record"] = on_record
        started, pi_before = time.perf_counter(), stats["pi_wall"]
        try:
            return analyse(*args, **kwargs)
        finally:  # the analysis alone: the power-iteration reference runs inside it, between layers
            stats["analysis_s"] = time.perf_counter() - started - (stats["pi_wall"] - pi_before)

    certificate_module.analyse = streaming_analyse  # rows as they come, with the record the row dict lacks
    wall0, cpu0 = time.perf_counter(), time.process_time()
    try:
        result = certificate(graph, shape, on_analysis=lambda a: records.extend(a.records), lower_budget_s=lower_budget)
    finally:
        certificate_module.analyse = analyse
    wall = time.perf_counter() - wall0 - stats["pi_wall"]
    cpu = time.process_time() - cpu0 - stats["pi_cpu"]
    worst, slowest = stats["worst"], stats["slowest"]
    net = result["network"]
    low = net["lower"]
    print("-" * 40)
    print(f"whole bound: {wall:.1f} s wall, {cpu:.1f} s CPU; worst conv upper/lower {worst:.5f}"
          + (f"; slowest conv vs 100-step power iteration {slowest:.2f}x" if power else ""))
    composed, product = net["upper"], net["product"]
    print(f"composed {composed:.6g}  product {product:.6g}  composed/product {composed / product:.3g}  "
          f"empirical lower {low if low is None else f'{low:.6g}'}  composed/lower "
          f"{'-' if not low else f'{composed / low:.3g}'}  method: {net['method']}")
    for chain in net["chains"]:
        print(f"  chain {chain['nodes'][0]}..{chain['nodes'][-1]} ({len(chain['nodes'])} nodes): "
              f"upper {chain['upper']}, {chain['ms'] / 1000:.1f} s")
    segments = {id(r.segment): r.segment for r in records if r.segment is not None and len(r.segment.members) > 1
                and r.segment.bound is not None}
    print(f"fused segments: {len(segments)} re-bounded in {sum(g.bound.ms for g in segments.values()) / 1000:.1f} s; "
          f"own node bounds {sum(r.bound.ms for r in records if r.bound is not None) / 1000:.1f} s")
    lower_s = net["lower_method"]["seconds"] if net.get("lower_method") else 0.0
    stats["own_s"] = sum(r.bound.ms for r in records if r.bound is not None) / 1000
    chains_s = sum(c["ms"] for c in net["chains"]) / 1000
    print(f"phases (wall s): own node bounds {stats['own_s']:.1f}, fused segments + chains + composition "
          f"{stats['analysis_s'] - stats['own_s']:.1f} (chains {chains_s:.1f}), empirical lower bound {lower_s:.1f} "
          f"(budget {net['lower_method']['budget_s'] if net.get('lower_method') else '-'}), rest "
          f"{wall - stats['analysis_s'] - lower_s:.1f}")
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
    parser.add_argument("--random", action="store_true", help="He-normal random Conv / Gemm weights (seed 0)")
    parser.add_argument("--lower-budget", type=float, default=10.0, help="seconds for the empirical lower bound "
                        "(as lipcert bounds --lower-budget)")
    parser.add_argument("--inline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    models = args.model or list(MODELS)
    if args.inline:
        run_one(models[0], not args.no_pi, args.random, args.lower_budget)
        return
    for name in models:  # one process per model: its own peak RSS
        flags = (["--no-pi"] if args.no_pi else []) + (["--random"] if args.random else []) + [
            "--lower-budget", str(args.lower_budget)]
        cmd = [sys.executable, os.path.abspath(__file__), "--inline", "--model", name, *flags]
        subprocess.run(cmd, check=False)


if __name__ == "__main__":
    main()
