"""Guaranteed l2 bounds of every convolution of ResNet-50 or VGG-19 at 224 x 224 (random He-scale weights).

Per layer: our guaranteed upper bound, the power-iteration lower bound (an achieved ||A v|| / ||v||), their ratio
and time; 100 steps of plain power iteration from a random start (common practice, not a bound) and its time; and
the exact norm where it is cheap (1x1 kernels: the SVD of the weight matrix; small operators: dense SVD). On a
shared machine compare CPU times ("x pi": our CPU time over the power iteration's). Goals:
upper / lower <= 1.01 on every layer, and the whole ResNet-50 set under 120 s on a 2-core CPU.

Small maps (``--max-map 14``: the 3x3 and strided layers on maps up to 14 x 14) are where the circular embedding is
loose; the exact zero-padded route (`certify.lipschitz.padded_gram`) takes them while its Gram matrix has a side of
at most ``--gram-max-side`` (default: its CPU / GPU limit); ``--width-divisor`` divides every channel count, to
measure that route at widths whose Gram matrix fits.

    python benchmarks/bench_conv_bounds.py [--model resnet50|vgg19] [--quick] [--max-map N] [--width-divisor D]
        [--gram-max-side S]
"""

from __future__ import annotations

# isort: off
import passive_threads  # noqa: F401  (OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP)
# isort: on

import argparse
import math
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from certify.lipschitz.conv import normalize_conv  # noqa: E402
from certify.lipschitz.linear_norms import conv_bound, dense_bound, linear_operator_lower  # noqa: E402


def resnet50_convs() -> list[tuple[str, int, int, int, int, int]]:
    """(name, C_in, C_out, kernel, stride, input size) of every convolution (torchvision v1.5 layout)."""
    layers = [("conv1", 3, 64, 7, 2, 224)]
    c_in, size = 64, 56
    for stage, (width, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=1):
        for block in range(blocks):
            s = stride if block == 0 else 1
            name = f"layer{stage}.{block}"
            layers.append((f"{name}.conv1", c_in, width, 1, 1, size))
            layers.append((f"{name}.conv2", width, width, 3, s, size))
            out_size = (size - 1) // s + 1
            layers.append((f"{name}.conv3", width, 4 * width, 1, 1, out_size))
            if block == 0:
                layers.append((f"{name}.downsample", c_in, 4 * width, 1, s, size))
            c_in, size = 4 * width, out_size
    return layers


def vgg19_convs() -> list[tuple[str, int, int, int, int, int]]:
    """The 16 convolutions of VGG-19; features.N numbers the convolutions (not torchvision module indices)."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]
    layers, c_in, size, index = [], 3, 224, 0
    for item in cfg:
        if item == "M":
            size //= 2
            continue
        layers.append((f"features.{index}", c_in, item, 3, 1, size))
        c_in, index = item, index + 1
    return layers


def _exact(weight: torch.Tensor, input_shape: tuple[int, ...], pads: list[int], stride: int) -> float | None:
    if weight.shape[-1] == 1:
        return dense_bound(weight.flatten(1)).upper  # a 1x1 convolution's norm is its matrix's
    size_in = math.prod(input_shape)
    if size_in * weight.shape[0] * size_in <= 1 << 22:
        return conv_bound(weight, input_shape, stride=stride, padding=pads).upper
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["resnet50", "vgg19"], default="resnet50")
    parser.add_argument("--quick", action="store_true", help="a few representative layers only")
    parser.add_argument("--no-baseline", action="store_true", help="skip the 100-step power iteration")
    parser.add_argument("--max-map", type=int, help="only kernels above 1x1 on input maps up to this size")
    parser.add_argument("--width-divisor", type=int, default=1, help="divide every channel count by this")
    parser.add_argument("--gram-max-side", type=int, help="largest Gram side of the exact small-map route (0: off)")
    args = parser.parse_args()
    layers = resnet50_convs() if args.model == "resnet50" else vgg19_convs()
    if args.max_map:
        layers = [layer for layer in layers if layer[3] > 1 and layer[5] <= args.max_map]
    d = args.width_divisor
    layers = [(name, max(1, c_in // d) if c_in > 3 else c_in, max(1, c_out // d), k, stride, size)
              for name, c_in, c_out, k, stride, size in layers]
    if args.quick:
        picks = {"conv1", "layer1.0.conv2", "layer2.0.conv2", "layer3.1.conv2", "layer4.0.downsample",
                 "layer4.1.conv2", "features.0", "features.5", "features.15"}
        layers = [layer for layer in layers if layer[0] in picks]
    torch.manual_seed(0)
    head = (f"{'layer':22} {'shape':22} {'in':>4} {'upper':>9} {'lower':>9} {'up/lo':>7} {'ms':>8} {'cpu ms':>8} "
            f"{'pi100':>9} {'pi ms':>8} {'pi cpu':>8} {'x pi':>5} {'exact':>9}  method")
    print(f"{args.model} convolutions, 224x224 input, widths / {d}, torch threads={torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(head)
    print("-" * len(head))
    total_ours = total_pi = total_cpu = total_pi_cpu = 0.0
    worst = 0.0
    for name, c_in, c_out, k, stride, size in layers:
        weight = torch.randn(c_out, c_in, k, k) * math.sqrt(2.0 / (c_in * k * k))
        pads = [k // 2] * 4
        input_shape = (c_in, size, size)
        cpu0 = time.process_time()
        bound = conv_bound(weight, input_shape, stride=stride, padding=pads, gram_max_side=args.gram_max_side)
        cpu = time.process_time() - cpu0
        total_cpu += cpu
        total_ours += bound.ms
        ratio = bound.ratio() or math.inf
        worst = max(worst, ratio)
        pi_text = pi_ms_text = pi_cpu_text = times_text = "-"
        if not args.no_baseline:
            geom = normalize_conv(weight, input_shape, stride=stride, padding=pads)
            t0, c0 = time.perf_counter(), time.process_time()
            value, _ = linear_operator_lower(geom.apply, input_shape, iters=100, seed=1)
            pi_ms = (time.perf_counter() - t0) * 1000
            pi_cpu = time.process_time() - c0
            total_pi_cpu += pi_cpu
            total_pi += pi_ms
            pi_text, pi_ms_text, pi_cpu_text = f"{value:9.4f}", f"{pi_ms:8.0f}", f"{pi_cpu * 1000:8.0f}"
            times_text = f"{cpu / pi_cpu:5.2f}"
        exact = _exact(weight, input_shape, pads, stride)
        shape = f"{c_out}x{c_in}x{k}x{k}/{stride}"
        exact_text = "-" if exact is None else f"{exact:9.4f}"
        print(f"{name:22} {shape:22} {size:4d} {bound.upper:9.4f} {bound.lower:9.4f} {ratio:7.4f} {bound.ms:8.0f} "
              f"{cpu * 1000:8.0f} {pi_text:>9} {pi_ms_text:>8} {pi_cpu_text:>8} {times_text:>5} {exact_text:>9}  "
              f"{bound.method.split('+')[0]}",
              flush=True)
    print("-" * len(head))
    print(f"layers={len(layers)} ours total {total_ours / 1000:.1f} s wall ({total_cpu:.1f} s CPU over "
          f"{torch.get_num_threads()} threads), worst upper/lower {worst:.4f}; "
          f"100-step power iteration total {total_pi / 1000:.1f} s ({total_pi_cpu:.1f} s CPU); "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
