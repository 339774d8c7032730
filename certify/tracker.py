"""Progress, cancellation and the time budget of one run: every stage reports through a :class:`Tracker`.

A caller (the CLI's bars, the worker's job record) passes ``progress(stage, fraction, message)`` and ``cancelled()``;
the tracker checks both conditions at every progress point and raises one exception per condition, so a stage
never has to know who is watching. The display of progress (bars, ETA) is :mod:`certify.progress`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from certify.errors import ModelRejected

ProgressFn = Callable[[str, float, str], None]
PartFn = Callable[..., None]  # part(fraction, message="")


class Cancelled(Exception):
    """The run was cancelled; raised at the next progress point."""


class DeadlineExceeded(ModelRejected):
    """The run went past its time budget (code ``time_budget_exceeded``)."""

    def __init__(self, budget_s: float, where: str = ""):
        super().__init__("time_budget_exceeded", f"the job ran past its time budget of {budget_s:g} s"
                         + (f" {where}" if where else ""))
        self.budget_s = budget_s


def _clamp(fraction: float) -> float:
    return max(0.0, min(1.0, fraction))


class Tracker:
    """Reports progress, checks cancellation and the deadline at every point, and times the stages of one run."""

    def __init__(self, progress: ProgressFn | None = None, cancelled: Callable[[], bool] | None = None,
                 budget_s: float = math.inf):
        self._progress = progress or (lambda stage, fraction, message: None)
        self.cancelled = cancelled or (lambda: False)
        self.budget_s = budget_s
        self._deadline = time.monotonic() + budget_s
        self.stages: list[dict] = []  # [{"stage", "status", "seconds", "reason"}], in the order they ended
        self._started: dict[str, float] = {}

    def check(self, stage: str) -> None:
        """Raise :class:`Cancelled` or :class:`DeadlineExceeded` when the run must stop."""
        if self.cancelled():
            raise Cancelled(f"cancelled during {stage}")
        if time.monotonic() > self._deadline:
            raise DeadlineExceeded(self.budget_s, f"during {stage}")

    def report(self, stage: str, fraction: float, message: str = "") -> None:
        """A progress point: check, then tell the caller ``fraction`` (clamped to [0, 1]) of ``stage`` is done."""
        self.check(stage)
        self._progress(stage, _clamp(fraction), message)

    def remaining(self) -> float:
        """Seconds left of the time budget."""
        return max(0.0, self._deadline - time.monotonic())

    def part(self, stage: str, lo: float = 0.0, hi: float = 1.0) -> PartFn:
        """``part(fraction, message="")`` for a sub-task covering [lo, hi] of ``stage``."""
        return lambda fraction, message="": self.report(stage, lo + (hi - lo) * fraction, message)

    def span(self, stage: str, lo: float = 0.0, hi: float = 1.0) -> Tracker:
        """A tracker for a sub-task covering [lo, hi] of ``stage``: its reports and checks are this run's."""
        return _Span(self, stage, lo, hi)

    def start(self, stage: str, message: str) -> None:
        self._started[stage] = time.perf_counter()
        self.report(stage, 0.0, message)

    def finish(self, stage: str, status: str = "done", reason: str | None = None) -> None:
        """Record ``stage`` as ended (``done`` or ``skipped`` with its reason) and report it complete."""
        seconds = time.perf_counter() - self._started.setdefault(stage, time.perf_counter())
        self.stages.append({"stage": stage, "status": status, "seconds": round(seconds, 4), "reason": reason})
        self.report(stage, 1.0, reason or status)

    def timings(self) -> dict[str, float]:
        return {s["stage"]: s["seconds"] for s in self.stages}


class _Span(Tracker):
    def __init__(self, parent: Tracker, stage: str, lo: float, hi: float):
        super().__init__()
        self._parent, self._stage, self._part = parent, stage, parent.part(stage, lo, hi)

    def check(self, stage: str) -> None:
        self._parent.check(self._stage)

    def report(self, stage: str, fraction: float, message: str = "") -> None:
        self._part(_clamp(fraction), message)

    def remaining(self) -> float:
        return self._parent.remaining()


class Steps:
    """Progress over a count of equal jobs inside one stage (the attack runs): ``step`` checks, ``batch`` reports."""

    def __init__(self, tracker: Tracker, stage: str, jobs: int):
        self.tracker, self.stage = tracker, stage
        self.jobs, self.done, self.message = max(jobs, 1), 0, ""

    def step(self) -> None:
        self.tracker.check(self.stage)

    def batch(self, done: int, total: int) -> None:
        self.report((self.done + done / max(total, 1)) / self.jobs)

    def start(self, message: str) -> None:
        self.message = message
        self.step()
        self.report(self.done / self.jobs)

    def finish_job(self) -> None:
        self.done += 1

    def report(self, fraction: float) -> None:
        self.tracker.report(self.stage, fraction, self.message)
