"""Falsifying a VNN-LIB property: gradient search for an input whose outputs fall in the unsafe set.

The search is the project's APGD (Croce & Hein 2020) with the property as its objective: for a sample aimed at
disjunct ``k`` (``C_k y <= d_k``) the loss is ``-max_i (C_k y - d_k)_i``, so it is won exactly where every row
holds. APGD runs on the unit cube mapped affinely onto the input box, which gives every input dimension the same
relative step however unequal the box's sides (ACAS Xu). Many seeded random starts per disjunct run as one batch;
after the first round the starts go to the disjuncts that came closest.

Gradients vanish through ReLUs that are off, and on some networks (mnistfc) the outputs are flat over most of the
box, so random starts all sit on one plateau. Every round therefore also starts PGD from vertices that steer a
hidden layer: a random weighting of its neurons (each scaled by its observed range) and the vertex given by the sign
of its gradient (the exact maximiser for the first layer, which is affine in the input); neurons that are off at the
centre get switched on this way, which gradient steps from the centre never do (in the spirit of output-diversified
starts, Tashiro et al. 2020, moved to the hidden layers). These steered starts run first: on such plateaus they
find in one round what the centre-started APGD does not find at all.

A candidate is reported only after onnxruntime, running the original ONNX model in float32 on the float32 input,
puts it inside the box and in the unsafe set: the converted torch module is never trusted for a verdict.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from certify.attacks import Box
from certify.attacks.apgd import APGD
from certify.attacks.base import AttackContext
from certify.attacks.batching import batch_seed
from certify.attacks.box import Feasible
from certify.attacks.pgd import PGD
from certify.vnnlib import Case, Conjunction

ACTIVATIONS = {"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "Tanh", "Softplus",
               "Softsign", "Clip", "Gelu", "HardSwish", "Mish"}
FOCUS = 2  # disjuncts that get the starts after the first round
UNUSED_ROW = 1e30  # the bound of padding rows: 0 <= 1e30 never decides the maximum (and alone is always met)


class OutOfTime(Exception):
    """The search's deadline passed (raised from the attack's per-step hook)."""


@dataclass
class Counterexample:
    """A confirmed counterexample: float32 input (flat, in the ONNX input's order) and onnxruntime's outputs."""

    x: np.ndarray
    y: np.ndarray
    case: int
    disjunct: int


class UnsafeObjective:
    """Attack loss ``-max_i (C_k y - d_k)_i`` for the disjunct ``k`` each sample targets (its "label")."""

    def __init__(self, unsafe: list[Conjunction], slack: float = 1e-5):
        rows = max(1, max(len(c.d) for c in unsafe))
        m = unsafe[0].C.shape[1]
        C = np.zeros((len(unsafe), rows, m))
        d = np.full((len(unsafe), rows), UNUSED_ROW)
        for k, c in enumerate(unsafe):
            C[k, :len(c.d)], d[k, :len(c.d)] = c.C, c.d
        self.C, self.d = torch.as_tensor(C, dtype=torch.float32), torch.as_tensor(d, dtype=torch.float32)
        self.slack = slack

    def violation(self, logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        y = logits.flatten(1)
        return (torch.einsum("brm,bm->br", self.C[k], y) - self.d[k]).amax(dim=1)

    def __call__(self, logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return -self.violation(logits, k)

    def success(self, logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Clearly inside the unsafe set in float32 torch (``slack`` leaves room for onnxruntime's rounding)."""
        return self.violation(logits, k) <= -self.slack * (1 + logits.flatten(1).abs().amax(dim=1))


class OnBox(nn.Module):
    """The model on the unit cube: ``z`` in [0, 1]^n runs the model at ``lower + (upper - lower) z``."""

    def __init__(self, model: nn.Module, lower: np.ndarray, upper: np.ndarray, input_shape: tuple[int, ...]):
        super().__init__()
        self.model, self.shape = model, tuple(input_shape)
        self.register_buffer("lower", torch.as_tensor(lower, dtype=torch.float32))
        self.register_buffer("width", torch.as_tensor(upper - lower, dtype=torch.float32))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model((self.lower + self.width * z).reshape(z.shape[0], *self.shape))


def to_float32_in_box(x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray | None:
    """``x`` rounded to float32 and moved (at most one ulp) inside ``[lower, upper]``; None where impossible."""
    x32 = np.clip(x, lower, upper).astype(np.float32)
    x32 = np.where(x32 > upper, np.nextafter(x32, np.float32(-np.inf)), x32)
    x32 = np.where(x32 < lower, np.nextafter(x32, np.float32(np.inf)), x32)
    if np.any(x32 < lower) or np.any(x32 > upper):
        return None
    return x32


class Checker:
    """Runs the original ONNX model in onnxruntime (float32, one sample of the full input ``shape``) and confirms
    counterexamples."""

    def __init__(self, session, input_name: str, input_shape: tuple[int, ...]):
        self.session, self.input_name, self.shape = session, input_name, tuple(input_shape)

    def outputs(self, x32: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: x32.reshape(self.shape)})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def confirm(self, case: Case, index: int, x: np.ndarray) -> Counterexample | None:
        x32 = to_float32_in_box(x.astype(np.float64), case.lower, case.upper)
        if x32 is None:
            return None
        y = self.outputs(x32)
        if not np.all(np.isfinite(y)):
            return None
        for k, conj in enumerate(case.unsafe):
            if conj.satisfied_by(y):
                return Counterexample(x32, y, index, k)
        return None


def attack_case(model: nn.Module, checker: Checker, case: Case, index: int, *, input_shape, deadline: float,
                seed: int = 0, restarts: int = 32, steps: int = 100, rounds: int | None = None,
                check_limit: int = 8, focus: int = FOCUS) -> Counterexample | None:
    """APGD rounds until a confirmed counterexample, ``rounds`` rounds, or ``deadline`` (``time.monotonic()``);
    None when none was confirmed. The first round gives every disjunct ``restarts`` starts; later rounds give the
    same number of starts to the ``focus`` disjuncts that came closest so far (on a robustness property most
    disjuncts, "class j beats the label", are hopeless and only waste starts)."""
    objective = UnsafeObjective(case.unsafe)
    wrapped = OnBox(model, case.lower, case.upper, input_shape).eval()
    n, k = case.lower.size, len(case.unsafe)
    labels = torch.arange(k).repeat(restarts)
    closest = torch.full((k,), torch.inf)
    uniform = APGD(steps=steps, loss=objective)
    steered = PGD(steps=2 * steps, rel_step=0.1, random_start=False, schedule="cosine", loss=objective)

    def tick():
        if time.monotonic() > deadline:
            raise OutOfTime

    r = 0
    while (rounds is None or r < rounds) and time.monotonic() < deadline:
        generator = torch.Generator().manual_seed(batch_seed(seed, "vnnlib", index, r))
        if r > 0 and k > focus:
            labels = torch.argsort(closest)[:focus].repeat(k * restarts // focus)
        centre = torch.full((len(labels), n), 0.5)
        try:
            starts = steering_vertices(wrapped, len(labels), generator)
            for attack, x0, eps in ((steered, starts, 1.0), (uniform, centre, 0.5)):
                if x0 is None:
                    continue
                feasible = Feasible(x0, Box(0.0, 1.0), "linf", eps)
                z = feasible.enforce(attack.perturb(wrapped, x0, labels, AttackContext(feasible, generator, tick)))
                found = check_points(wrapped, checker, case, index, z, labels, objective, check_limit, closest)
                if found is not None:
                    return found
        except OutOfTime:
            return None
        r += 1
    return None


def hidden_layers(graph) -> list[str]:
    """The tensors entering the graph's activations, in order."""
    steps = graph.steps() if hasattr(graph, "steps") else ()
    return [inputs[0] for op, inputs, _ in steps if op.op_type in ACTIVATIONS]


def steering_vertices(wrapped: OnBox, count: int, generator: torch.Generator, samples: int = 64):
    """``count`` cube vertices, each the sign of the gradient at the centre of a random weighting of one hidden
    layer's neurons, the layer drawn per start (None when the model has no recognisable activation). Weights
    favour neurons seen on both sides of zero over ``samples`` random points and are scaled by their range."""
    names = hidden_layers(wrapped.model)
    if not names:
        return None
    n = wrapped.lower.numel()

    def hidden(z):
        _, env = wrapped.model.run((wrapped.lower + wrapped.width * z).reshape(len(z), *wrapped.shape), keep=True)
        return [env[name].flatten(1) for name in names]

    with torch.no_grad():
        seen = hidden(torch.rand((samples, n), generator=generator))
    layer = torch.randint(len(names), (count,), generator=generator)
    z = torch.full((count, n), 0.5, requires_grad=True)
    with torch.enable_grad():
        total = 0.0
        for i, h in enumerate(hidden(z)):
            low, high = seen[i].amin(0), seen[i].amax(0)
            weight = (((low < 0) & (high > 0)).float() + 0.05) / (high - low + 1e-6)
            signs = torch.rand(h.shape, generator=generator) * 2 - 1
            total = total + ((h * signs * weight).sum(1) * (layer == i)).sum()
        (grad,) = torch.autograd.grad(total, z)
    return (grad > 0).float()


def check_points(wrapped: OnBox, checker: Checker, case: Case, index: int, z: torch.Tensor, labels: torch.Tensor,
                 objective: UnsafeObjective, limit: int, closest: torch.Tensor | None = None) -> Counterexample | None:
    """Confirm in onnxruntime the (at most ``limit``) most violating points that torch puts in the unsafe set;
    ``closest`` (per disjunct) is lowered to the smallest violation seen."""
    with torch.no_grad():
        violation = objective.violation(wrapped(z), labels)
    if closest is not None:
        closest.scatter_reduce_(0, labels, violation, reduce="amin")
    order = torch.argsort(violation)[:limit]
    lower, width = case.lower, case.upper - case.lower
    for i in order.tolist():
        if violation[i] > 0:
            break
        found = checker.confirm(case, index, lower + width * z[i].double().numpy())
        if found is not None:
            return found
    return None
