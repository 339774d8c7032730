"""Running an attack over a data set in batches: seeded per batch, memory-bounded (a CUDA OOM halves the batch).

Every batch draws its randomness from its own generator, seeded from (seed, attack, norm, eps, first row), so the
same seed gives the same result on the same device (on CUDA as far as its kernels are deterministic).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

from certify.attacks.base import Attack, AttackContext
from certify.attacks.box import Box, Feasible

DEFAULT_BATCH_SIZE = 256


def batch_seed(*parts) -> int:
    """A stable 63-bit seed from the run's seed and what is being run (process-independent, unlike hash())."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def for_batches(n: int, batch_size: int, fn: Callable[[int, int], None], device: torch.device) -> int:
    """Call ``fn(start, end)`` over ``range(n)`` in chunks; on out-of-memory halve the chunk and retry it.

    Returns the batch size finally used (callers reuse it for the next attack).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    start = 0
    while start < n:
        end = min(n, start + batch_size)
        try:
            fn(start, end)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not is_out_of_memory(e) or batch_size == 1:
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            batch_size //= 2
            continue
        start = end
    return batch_size


class AttackRunner:
    """Runs attacks on one model and device with one box, seed, batch size and cancellation hook."""

    def __init__(self, model, box: Box, *, device: torch.device, seed: int = 0, batch_size: int | None = None,
                 step: Callable[[], None] = lambda: None, on_batch: Callable[[int, int], None] | None = None):
        self.model, self.box, self.device, self.seed = model, box, device, seed
        self.batch_size = batch_size or DEFAULT_BATCH_SIZE
        self.step = step
        self.on_batch = on_batch or (lambda done, total: None)

    def run(self, attack: Attack, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float | None) -> torch.Tensor:
        """Adversarial candidates for all of ``x`` (kept on ``x``'s device, computed batch by batch on the device)."""
        out = torch.empty_like(x)
        n = x.shape[0]

        def one_batch(start: int, end: int) -> None:
            xb = x[start:end].to(self.device)
            yb = y[start:end].to(self.device)
            feasible = Feasible(xb, self.box, norm, None if attack.minimal else eps)
            generator = torch.Generator(device=self.device)
            generator.manual_seed(batch_seed(self.seed, attack.name, norm, eps, start))
            ctx = AttackContext(feasible, generator, self.step)
            adv = attack.perturb(self.model, xb, yb, ctx)
            out[start:end] = feasible.enforce(adv.detach()).to(out.device)
            self.on_batch(end, n)

        self.batch_size = for_batches(n, self.batch_size, one_batch, self.device)
        return out

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted labels, batched, without gradients."""
        out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)

        def one_batch(start: int, end: int) -> None:
            with torch.no_grad():
                out[start:end] = self.model(x[start:end].to(self.device)).argmax(dim=1).to(out.device)

        self.batch_size = for_batches(x.shape[0], self.batch_size, one_batch, self.device)
        return out
