"""The truth against which every claimed bound is checked, and the generated soundness table.

For one instance (a small ONNX model, see :mod:`certify.ops.examples`) and one norm, :func:`check` compares the
whole-model bound of the code path ``lipcert bounds`` uses (load, convert, :func:`network_bound`) with the truth
computed independently in float64:

- an affine model (its Jacobian is the same at every sampled point): the exact norm of the materialised Jacobian
  (L2: its largest singular value; L-inf: its largest absolute row sum);
- any other model: the best lower bound found on the Lipschitz constant, the largest of the local Jacobian norms and
  of the secants ``||f(x) - f(y)|| / ||x - y||`` at many starts over wide input ranges, each pair improved by
  gradient ascent on the secant ratio.

A claimed upper bound below ``truth * (1 - TOLERANCE)`` (``EXACT_TOLERANCE`` for exact truths) is unsound.
``python -m certify.lipschitz.soundness --write docs/soundness.md`` regenerates the per-operator table (instances,
unbounded claims, tightness upper / truth).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

#: Relative slack for float64 rounding in the truth computation: searched (non-affine) truths, and exact ones (the
#: materialised Jacobian's norm), where only the float64 rounding of both sides can differ.
TOLERANCE = 1e-6
EXACT_TOLERANCE = 1e-9
#: Input scales the search starts from (the whole real line matters, not the data range).
SCALES = (1e-3, 0.1, 1.0, 10.0, 300.0)


@dataclass
class Result:
    upper: float | None  # the claimed whole-model bound (None: reported unbounded)
    truth: float  # exact (affine) or best lower bound
    exact: bool

    @property
    def sound(self) -> bool:
        slack = EXACT_TOLERANCE if self.exact else TOLERANCE
        return self.upper is None or not self.upper < self.truth * (1 - slack)

    @property
    def ratio(self) -> float | None:
        if self.upper is None or not self.truth > 0 or not math.isfinite(self.truth):
            return None
        return self.upper / self.truth


def claimed(model, norm: str) -> tuple[float | None, object]:
    """The whole-model bound ``lipcert bounds`` reports, and the converted module."""
    from certify.convert import to_torch
    from certify.lipschitz.certificate import network_bound
    from certify.load import load_onnx

    module = to_torch(load_onnx(model.SerializeToString()))
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    analysis = network_bound(module, shape, norm=norm)
    return analysis.composed.get(analysis.output_name), module


def float64_function(module, per_sample: tuple):
    """``v (n,) -> f(v) (m,)`` in float64: the module's weights and working precision promoted to float64 (a Cast
    to float32 is the model's own precision, not a rounding of it); lower-precision casts stay."""
    f64 = copy.deepcopy(module).double()
    for op in f64.modules():
        if hasattr(op, "promote_float32"):  # ``OnnxOp.promote_float32``
            op.promote_float32()

    def f(v: torch.Tensor) -> torch.Tensor:
        return _first(f64(v.reshape(1, *per_sample))).reshape(-1)

    def rows(vs: torch.Tensor) -> torch.Tensor:  # the module on a batch (checked against f before it is used)
        return _first(f64(vs.reshape(len(vs), *per_sample))).reshape(len(vs), -1)

    return f, rows


def _first(out) -> torch.Tensor:
    return (out[0] if isinstance(out, (tuple, list)) else out).to(torch.float64)


def operator_norm(jacobian: torch.Tensor, norm: str) -> float:
    if not bool(torch.isfinite(jacobian).all()):
        return math.nan if bool(torch.isnan(jacobian).any()) else math.inf
    if jacobian.numel() == 0:
        return 0.0
    if norm == "linf":
        return float(jacobian.abs().sum(dim=1).max())
    return float(np.linalg.norm(jacobian.numpy(), 2))


def _vector_norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    return v.abs().amax(dim=-1) if norm == "linf" else v.norm(dim=-1)


def _batched(f, rows):
    """``f`` over the rows of a matrix: vmapped, else the module run on the batch (where it gives the same rows),
    else one row at a time."""
    vmapped = torch.func.vmap(f)
    mode = []

    def run(xs: torch.Tensor) -> torch.Tensor:
        if not mode:
            probe = xs[:2].detach()
            try:
                vmapped(probe)
                mode.append("vmap")
            except (RuntimeError, ValueError, NotImplementedError):
                try:
                    one_by_one = torch.stack([f(x) for x in probe])
                    together = rows(probe)  # the model may not keep a batch axis: then it differs
                    same = together.shape == one_by_one.shape and bool(torch.equal(together, one_by_one))
                except (RuntimeError, ValueError):
                    same = False
                mode.append("batch" if same else "loop")
        if mode[0] == "vmap":
            return vmapped(xs)
        if mode[0] == "batch":
            return rows(xs)
        return torch.stack([f(x) for x in xs])

    return run


def _jacobians(f, run, points: torch.Tensor) -> list[torch.Tensor]:
    """The Jacobian at each point (none for an output without gradient: integer or shape outputs)."""
    try:
        return list(torch.func.vmap(torch.func.jacrev(f))(points))
    except (RuntimeError, ValueError, NotImplementedError):
        pass
    try:  # rows are independent: one backward pass per output entry for all points at once
        jac = torch.autograd.functional.jacobian(lambda xs: run(xs).sum(dim=0), points)
    except RuntimeError:
        return []
    return list(jac.permute(1, 0, 2))


def _secants(fb, x: torch.Tensor, d: torch.Tensor, norm: str, steps: int) -> float:
    """Largest ``||f(x + d) - f(x)|| / ||d||`` seen while ascending it from the pairs (rows of x, d), less a
    bound on its float64 rounding."""
    best = 0.0
    scale_x = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-6)
    scale_d = d.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    u = (x / scale_x).requires_grad_(True)
    w = (d / scale_d).requires_grad_(True)
    optimiser = torch.optim.Adam([u, w], lr=0.05)
    for step in range(steps + 1):
        xs, ds = u * scale_x, w * scale_d
        try:
            fx, fy = fb(xs), fb(xs + ds)
        except RuntimeError:
            return best
        # minus the float64 rounding of the difference, so a step shrunk to nothing cannot win on noise
        step_norm = _vector_norm(ds, norm)
        noise = 1e-12 * (_vector_norm(fx, norm) + _vector_norm(fy, norm) + _vector_norm(xs, norm)) / step_norm
        ratios = _vector_norm(fy - fx, norm) / step_norm - noise
        finite = ratios.detach()[~torch.isnan(ratios.detach())]
        if finite.numel():
            best = max(best, float(finite.max()))
        if step == steps or not ratios.requires_grad or math.isinf(best):
            break
        optimiser.zero_grad()
        (-torch.nan_to_num(ratios, nan=0.0, posinf=0.0).sum()).backward()
        optimiser.step()
    return best


def truth(module, per_sample: tuple, norm: str, seed: int = 0, starts: int = 4, steps: int = 12) -> tuple[float, bool]:
    """``(value, exact)``: the exact norm of an affine model, else the best lower bound found."""
    f, rows = float64_function(module, per_sample)
    run = _batched(f, rows)
    n = math.prod(per_sample)
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.tensor([0.0] + [s for s in SCALES for _ in range(starts)], dtype=torch.float64)[:, None]
    points = torch.randn((len(sizes), n), generator=gen, dtype=torch.float64) * sizes
    jacobians = _jacobians(f, run, points)
    norms = [operator_norm(j, norm) for j in jacobians]
    best = max([v for v in norms if not math.isnan(v)], default=0.0)
    if jacobians and jacobians[0].numel() == 0:  # an empty output
        return 0.0, True
    if jacobians and all(torch.isfinite(j).all() for j in jacobians):
        first = jacobians[0]
        tol = 1e-9 * (1.0 + float(first.abs().max()))
        if all(float((j - first).abs().max()) <= tol for j in jacobians[1:]):
            x = points[-1]
            with torch.no_grad():
                residual = float((f(x) - f(points[0]) - first @ x).abs().max())
            if residual <= 1e-9 * (1 + float(x.abs().max())) * (1 + float(first.abs().sum(dim=1).max())):
                return best, True
    x = points[1:]
    d = torch.randn(x.shape, generator=gen, dtype=torch.float64) * sizes[1:] * torch.tensor(
        [1e-4, 1e-2, 1.0, 3.0] * (len(x) // 4 + 1), dtype=torch.float64)[:len(x), None]
    return max(best, _secants(run, x, d, norm, steps)), False


def check(model, norm: str, seed: int = 0) -> Result:
    upper, module = claimed(model, norm)
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
    value, exact = truth(module, shape, norm, seed=seed)
    return Result(upper, value, exact)


# --------------------------------------------------------------------------------------------------------------
# the generated table


def examples(op_type: str, seed: int):
    """The instance ``seed`` of ``op_type``'s generator, or of a composed family (``fused``, ``dag``)."""
    from certify.ops import registry
    from certify.ops.composed import COMPOSED

    rng = np.random.default_rng([seed, sum(map(ord, op_type))])
    if op_type in COMPOSED:
        return COMPOSED[op_type](rng)
    return registry.classes()[op_type].example(op_type, rng)


@contextlib.contextmanager
def large_segment_path():
    """No segment is small enough to materialise: the fusion code without explicit matrices runs."""
    from certify.lipschitz import segments

    saved = segments.EXPLICIT_MAX_INPUTS, segments.EXPLICIT_MAX_ENTRIES
    segments.EXPLICIT_MAX_INPUTS = segments.EXPLICIT_MAX_ENTRIES = 0
    try:
        yield
    finally:
        segments.EXPLICIT_MAX_INPUTS, segments.EXPLICIT_MAX_ENTRIES = saved


#: Rows of the table beyond the operators: name -> (instance family, context the analysis runs in).
COMPOSED_ROWS = {"fused (Conv/Gemm + scales)": ("fused", contextlib.nullcontext),
                 "fused, large-segment path": ("fused", large_segment_path),
                 "dag (residual, concat, chains)": ("dag", contextlib.nullcontext),
                 "pooled (Conv, activation, LRN, MaxPool)": ("pooled", contextlib.nullcontext)}


def survey(op_types, count: int) -> dict:
    """Per operator (and composed row) and norm: checked, unbounded, unsound, refused, the upper/truth ratios."""
    from certify.errors import ModelRejected

    table = {}
    rows = [(op, op, contextlib.nullcontext) for op in op_types] + [(name, *spec) for name, spec in
                                                                     COMPOSED_ROWS.items()]
    for label, op_type, context in rows:
        for norm in ("l2", "linf"):
            row = table.setdefault((label, norm), {"checked": 0, "unbounded": 0, "unsound": 0, "refused": 0,
                                                   "ratios": []})
            for seed in range(count):
                try:
                    with context():
                        result = check(examples(op_type, seed).model, norm, seed)
                except (ModelRejected, ValueError):
                    row["refused"] += 1
                    continue
                row["checked"] += 1
                row["unbounded"] += result.upper is None
                row["unsound"] += not result.sound
                if result.ratio is not None:
                    row["ratios"].append(result.ratio)
    return table


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def markdown(table: dict, count: int) -> str:
    lines = ["# Soundness of the bound rules", "",
             f"Generated by `python -m certify.lipschitz.soundness --write docs/soundness.md`: {count} random "
             "instances per operator and norm from the generator declared beside each operator, each claimed "
             "whole-model bound compared with the float64 truth (the exact Jacobian norm of affine instances, else "
             "the best lower bound from Jacobian norms and secant ascent). `refused` instances were rejected at load "
             "or conversion; `unbounded` ones were reported without a constant; `unsound` counts claims below the "
             "truth. Tightness is upper / truth over the bounded instances with a nonzero truth (for non-affine "
             "instances the truth is a lower bound, so the ratio overstates the looseness); a `lowest` below 1 is an "
             "unsound claim, and `tests/test_soundness.py` fails on any. The families a review once found unsound "
             "(Clip with input-dependent bounds, a Conv+scale fold on the wrong axis, Celu with alpha <= 0, "
             "ConvTranspose under L-inf, casts to 16-bit floats) are regression tests there.", "",
             "| operator | norm | checked | unbounded | refused | unsound | median upper/truth | worst (loosest) | "
             "lowest |", "|---|---|---|---|---|---|---|---|---|"]
    for (op_type, norm), row in table.items():
        ratios = row["ratios"]
        median = float(np.median(ratios)) if ratios else None
        worst, lowest = (max(ratios), min(ratios)) if ratios else (None, None)
        lines.append(f"| {op_type} | {norm} | {row['checked']} | {row['unbounded']} | {row['refused']} | "
                     f"{row['unsound']} | {_fmt(median)} | {_fmt(worst)} | {_fmt(lowest)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from certify.ops import registry

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", metavar="PATH", help="write the table here (default: print it)")
    parser.add_argument("--count", type=int, default=20, help="instances per operator and norm")
    parser.add_argument("--ops", nargs="*", help="only these operators")
    args = parser.parse_args(argv)
    text = markdown(survey(args.ops or sorted(registry.classes()), args.count), args.count)
    if args.write:
        with open(args.write, "w") as f:
            f.write(text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
