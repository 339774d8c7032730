"""Converter speed: conversion time, and forward latency of the converted module against onnxruntime.

Both run on the CPU with the same number of intra-op threads (``os.cpu_count()`` unless ``--threads``). Latency is
the median of ``--runs`` timed runs after ``--warmup`` untimed ones; ``ratio`` is torch/ort wall time, ``cpu ratio``
the same for process CPU time. Goals: torch/ort ratio <= 1.5 at batch 16, ResNet-50 conversion under 2 s.

The light_* models pin batch 1 twice: in the input shape and in the flatten's Reshape target ``[1, features]``.
For other batch sizes the input's first dimension is set to the batch and that target's leading 1 becomes 0
("copy the input's dimension"), which leaves batch 1 unchanged.

On a busy machine (load average above the core count) spinning OpenMP threads lose whole time slices waiting at
barriers; torch here waits passively (``OMP_WAIT_POLICY=PASSIVE``, lipcert's setting, see certify/threads.py) unless
the variable is set. Compare with torch's default spinning: ``OMP_WAIT_POLICY= python benchmarks/bench_convert.py``
(an empty value keeps libgomp's default, with a warning), and with onnxruntime not spinning either: ``--no-spin``.

    python benchmarks/bench_convert.py [--models resnet50 vgg19] [--batches 1 16] [--runs 5] [--no-spin]
"""

from __future__ import annotations

# isort: off
import passive_threads  # noqa: F401  (OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP)
# isort: on

import argparse
import os
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

import certify

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
DEFAULT_MODELS = ["resnet50", "vgg19", "bvlc_alexnet"]


def at_batch(model: onnx.ModelProto, batch: int) -> bytes:
    """The model's bytes with its data input and flatten Reshape set to ``batch``."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    initializers = {t.name: t for t in model.graph.initializer}
    data_input = next(vi for vi in model.graph.input if vi.name not in initializers)
    data_input.type.tensor_type.shape.dim[0].dim_value = batch
    for output in model.graph.output:
        output.type.tensor_type.shape.dim[0].dim_value = batch
    for node in model.graph.node:
        target = initializers.get(node.input[1]) if node.op_type == "Reshape" else None
        if target is not None:
            shape = numpy_helper.to_array(target).copy()
            if shape[0] == 1:
                shape[0] = 0
                target.CopyFrom(numpy_helper.from_array(shape, target.name))
    del model.graph.value_info[:]
    return model.SerializeToString()


def median_ms(run, warmup: int, runs: int) -> tuple[float, float]:
    """Median wall time and median process CPU time (all threads) of ``run``, in ms.

    CPU time counts only the work done, so its ratio stays meaningful on a machine busy with other processes.
    """
    for _ in range(warmup):
        run()
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return 1000 * statistics.median(wall), 1000 * statistics.median(cpu)


def convert_seconds(model_bytes: bytes, repeats: int) -> tuple[float, torch.nn.Module]:
    """Median wall time of ``to_torch`` on the loaded model (loading is not counted), and the last module."""
    model = certify.load_onnx(model_bytes)
    times = []
    module = None
    for _ in range(repeats):
        module = None  # free the previous copy of the weights first
        start = time.perf_counter()
        module = certify.to_torch(model)
        times.append(time.perf_counter() - start)
    return statistics.median(times), module


def bench_model(
    name: str, batches, threads: int, warmup: int, runs: int, convert_repeats: int, spin: bool = True
) -> list[dict]:
    base = onnx.load(os.path.join(LIGHT_DIR, f"light_{name}.onnx"))
    rows = []
    for batch in batches:
        model_bytes = at_batch(base, batch)
        seconds, module = convert_seconds(model_bytes, convert_repeats)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        feed_name = session.get_inputs()[0].name
        x = np.random.default_rng(0).uniform(0, 1, size=(batch, 3, 224, 224)).astype(np.float32)
        xt = torch.from_numpy(x)

        def run_torch(module=module, xt=xt):
            with torch.inference_mode():
                module(xt)

        ort_ms, ort_cpu = median_ms(
            lambda session=session, feed_name=feed_name, x=x: session.run(None, {feed_name: x}), warmup, runs
        )
        torch_ms, torch_cpu = median_ms(run_torch, warmup, runs)
        rows.append(
            {
                "model": name,
                "batch": batch,
                "ort_ms": ort_ms,
                "torch_ms": torch_ms,
                "ratio": torch_ms / ort_ms,
                "cpu_ratio": torch_cpu / ort_cpu,
                "convert_s": seconds,
            }
        )
        print(format_row(rows[-1]), flush=True)
        del session, module
    return rows


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: above the core count, timings include waiting for the CPU."""
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


HEADER = f"{'model':<14} {'batch':>5} {'ort ms':>10} {'torch ms':>10} {'ratio':>6} {'cpu ratio':>9} {'convert s':>10}"


def format_row(r: dict) -> str:
    return (
        f"{r['model']:<14} {r['batch']:>5} {r['ort_ms']:>10.1f} {r['torch_ms']:>10.1f} {r['ratio']:>6.2f} "
        f"{r['cpu_ratio']:>9.2f} {r['convert_s']:>10.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--convert-repeats", type=int, default=3)
    parser.add_argument(
        "--no-spin",
        action="store_true",
        help="onnxruntime threads wait without spinning (pair with OMP_WAIT_POLICY=PASSIVE for torch)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, {args.threads} threads, "
        f"median of {args.runs} runs after {args.warmup} warm-up; OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}, ort spinning {'off' if args.no_spin else 'on'}; "
        f"load average {load_average()}"
    )
    print(HEADER)
    for name in args.models:
        bench_model(name, args.batches, args.threads, args.warmup, args.runs, args.convert_repeats, not args.no_spin)
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
