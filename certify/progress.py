"""Progress display and the ETA estimate shared by the command line and the worker.

A naive ETA (elapsed * (1 - f) / f) jumps whenever the work is uneven: a fast stage followed by a slow one makes it
rise near the end, which reads as a broken clock. :class:`Eta` smooths the estimate and, once the work is past
``settle`` of its total, never lets it rise: it follows the wall clock down, or the fresh estimate where that is
lower. The bars (tqdm, on stderr) show these ETAs; they are off with ``--quiet`` and when stderr is not a terminal,
where one plain line per stage start and end is written instead (logs stay readable).
"""

from __future__ import annotations

import sys
import time

# Rough share of a job's time per pipeline stage: attacks and bounds dominate. Weighting the overall fraction by
# them keeps a quick load/convert from promising an early end that the attacks then take back.
STAGE_WEIGHTS = {"load": 1, "convert": 1, "conversion_check": 1, "bounds": 4, "certified": 1, "attacks": 10,
                 "transfer": 3, "properties": 2, "report": 1}


def overall_fraction(stages, index: int, fraction: float) -> float:
    """The fraction of the whole job done when stage ``stages[index]`` is ``fraction`` done."""
    weights = [STAGE_WEIGHTS.get(s, 1) for s in stages]
    done = sum(weights[:index]) + weights[index] * max(0.0, min(1.0, fraction))
    return min(1.0, done / sum(weights))


class Eta:
    """Seconds left from the fraction of work done, smoothed and monotone once past ``settle`` of the work."""

    def __init__(self, settle: float = 0.5, smoothing: float = 0.3, clock=time.monotonic):
        self.settle, self.smoothing, self.clock = settle, smoothing, clock
        self.started = clock()
        self.fraction = 0.0
        self.eta: float | None = None
        self._at: float | None = None

    def update(self, fraction: float, now: float | None = None) -> float | None:
        """The ETA after ``fraction`` (0..1) of the work is done; None while there is too little to go on."""
        now = self.clock() if now is None else now
        self.fraction = max(self.fraction, min(1.0, max(0.0, fraction)))
        f = self.fraction
        if f >= 1.0:
            self.eta, self._at = 0.0, now
            return 0.0
        elapsed = now - self.started
        if f < 0.01 or elapsed <= 0:
            return self.eta
        raw = elapsed * (1.0 - f) / f
        if self.eta is None:
            eta = raw
        else:
            countdown = max(0.0, self.eta - (now - self._at))  # the previous estimate, run down by the clock
            eta = countdown + self.smoothing * (raw - countdown)
            if f >= self.settle:
                eta = min(eta, countdown)
        self.eta, self._at = max(0.0, eta), now
        return self.eta


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "eta ?"
    seconds = int(round(seconds))
    return f"eta {seconds // 60}:{seconds % 60:02d}"


class Bar:
    """One tqdm bar (percent, ETA from :class:`Eta`, a message); ``close`` leaves it where the work stopped."""

    def __init__(self, label: str, stream=None):
        from tqdm import tqdm

        self.eta = Eta()
        label = label.replace("{", "{{").replace("}", "}}")  # the label is fixed; tqdm's desc carries the ETA
        self.bar = tqdm(total=1000, desc="eta ?", file=stream or sys.stderr, leave=True, dynamic_ncols=True,
                        bar_format=label + " {percentage:3.0f}%|{bar}| {desc}")

    def update(self, fraction: float, message: str = "", eta: float | None = None) -> None:
        """Draw ``fraction`` done; ``eta`` when the work reports its own (a job's ``eta_s``), else estimated here."""
        fraction = max(0.0, min(1.0, fraction))
        estimate = self.eta.update(fraction)
        eta = estimate if eta is None else eta
        self.bar.n = max(self.bar.n, int(round(1000 * fraction)))
        self.bar.set_description_str(f"{format_eta(eta)}  {message[:60]}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class StageProgress:
    """The pipeline's ``progress(stage, fraction, message)`` callback for a terminal: one bar per stage.

    ``quiet`` turns it off; a stream that is not a terminal gets no bar, only (with ``lines``) one line when a stage
    starts and one when it ends.
    """

    def __init__(self, stream=None, quiet: bool = False, lines: bool = True):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.lines = lines
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.stage: str | None = None
        self.bar: Bar | None = None

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        if self.quiet:
            return
        first = stage != self.stage
        if first:
            self.close()
            self.stage = stage
            if self.tty:
                self.bar = Bar(f"{stage:<16}", self.stream)
        if self.bar is not None:
            self.bar.update(fraction, message)
        elif self.lines and (first or fraction >= 1.0):
            self.stream.write(f"[{stage}] {message}\n")
        self.stream.flush()

    def close(self) -> None:
        """End the current bar where it stands (a failed stage keeps its last percentage)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
