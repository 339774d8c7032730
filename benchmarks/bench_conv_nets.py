"""Whole conv nets: per conv layer upper / lower and CPU time against a 100-step power iteration on the same layer,
the whole bound's wall and CPU time, composed / product / empirical lower, and peak RSS (one process per model).

Models: the light ImageNet nets shipped with onnx (AlexNet, VGG-19, ResNet-50; constant weights, so every kernel is
tap-separable) and the small trained CNN of ``examples/digits_cnn.onnx``. ``--random`` replaces every Conv and Gemm
weight of the light nets by He-normal random values (seed 0; biases and BatchNorm kept): general kernels, the case
that tightness and time goals are measured on. Each conv row is printed (flushed) as soon as the layer is bounded,
so a run cut short still shows its rows; the power-iteration reference time is excluded from the whole-bound time.

    nice python benchmarks/bench_conv_nets.py [--model alexnet|vgg19|resnet50|digits_cnn ...] [--random] [--no-pi]
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


def random_weights(path: str, seed: int = 0) -> str:
    """A copy of the model with He-normal Conv and Gemm weights (std sqrt(2 / fan_in)); returns the new file."""
    import tempfile

    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    shapes = {i.name: tuple(numpy_helper.to_array(i).shape) for i in graph.initializer}
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    rng = np.random.default_rng(seed)
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        source = producer.get(node.input[1])
        shape = (tuple(int(v) for v in constants[source.input[0]]) if source is not None
                 and source.op_type == "ConstantOfShape" else shapes[node.input[1]])
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        fan_in = shape[1] if node.op_type == "Gemm" and trans_b else (
            shape[0] if node.op_type == "Gemm" else int(np.prod(shape[1:])))
        name = f"{node.name or node.output[0]}_he_weight"
        value = rng.standard_normal(shape).astype(np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        graph.initializer.append(numpy_helper.from_array(value, name))
        node.input[1] = name
    handle, out = tempfile.mkstemp(suffix=".onnx")
    os.close(handle)
    onnx.save(model, out)
    return out


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


def run_one(name: str, power: bool, random: bool) -> None:
    import torch

    import certify
    from certify.lipschitz.certificate import certificate

    path = random_weights(model_path(name)) if random and name != "digits_cnn" else model_path(name)
    graph = certify.to_torch(certify.load_onnx(path))
    shape = tuple(graph.shapes[graph.input_names[0]][1:])
    print(f"\n{name}{' (random He weights)' if path != model_path(name) else ''}: input {list(shape)}, "
          f"torch threads={torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
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
        return analyse(*args, **kwargs)

    certificate_module.analyse = streaming_analyse  # rows as they come, with the record the row dict lacks
    wall0, cpu0 = time.perf_counter(), time.process_time()
    try:
        result = certificate(graph, shape, on_analysis=lambda a: records.extend(a.records))
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
    parser.add_argument("--inline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    models = args.model or list(MODELS)
    if args.inline:
        run_one(models[0], not args.no_pi, args.random)
        return
    for name in models:  # one process per model: its own peak RSS
        flags = (["--no-pi"] if args.no_pi else []) + (["--random"] if args.random else [])
        cmd = [sys.executable, os.path.abspath(__file__), "--inline", "--model", name, *flags]
        subprocess.run(cmd, check=False)


if __name__ == "__main__":
    main()
