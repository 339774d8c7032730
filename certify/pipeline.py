"""The one pipeline the CLI and the worker both run.

load safely -> convert -> check the conversion against onnxruntime -> Lipschitz certificate -> attacks ->
assemble the report -> evaluate policy -> sign. A stage that cannot run (no dataset, not built yet) is recorded as
skipped with its reason, never faked.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from certify.config import load_config

ProgressFn = Callable[[str, float, str], None]

STAGES = ("load", "convert", "conversion_check", "bounds", "attacks", "report")


class Cancelled(Exception):
    """The job was cancelled; raised at the next progress point."""


@dataclass
class PipelineResult:
    statement: dict  # the in-toto statement (unsigned)
    envelope: dict | None  # the DSSE envelope, when a signer was given
    stages: list[dict] = field(default_factory=list)  # [{"stage", "status", "seconds", "reason"?}]


class _Run:
    """Progress, cancellation and per-stage timing for one pipeline run."""

    def __init__(self, progress: ProgressFn | None, cancelled: Callable[[], bool] | None):
        self._progress = progress or (lambda stage, fraction, message: None)
        self._cancelled = cancelled or (lambda: False)
        self.stages: list[dict] = []

    def tick(self, stage: str, fraction: float, message: str = "") -> None:
        if self._cancelled():
            raise Cancelled(f"cancelled during {stage}")
        self._progress(stage, max(0.0, min(1.0, fraction)), message)

    def done(self, stage: str, started: float, status: str = "done", reason: str | None = None) -> None:
        entry = {"stage": stage, "status": status, "seconds": round(time.perf_counter() - started, 4)}
        if reason:
            entry["reason"] = reason
        self.stages.append(entry)
        self.tick(stage, 1.0, reason or status)


def _read(source) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), "model.onnx"
    with open(source, "rb") as f:
        return f.read(), os.path.basename(os.fspath(source))


def run_pipeline(
    model_source,
    config: dict | None = None,
    dataset=None,
    progress: ProgressFn | None = None,
    cancelled: Callable[[], bool] | None = None,
    signer=None,
    model_name: str | None = None,
) -> PipelineResult:
    """Run every stage on ``model_source`` (path or bytes) and ``dataset`` (.npz path or None).

    ``progress(stage, fraction, message)`` is called at every progress point; ``cancelled()`` is checked there too
    and raises :class:`Cancelled`. Refusals raise ``ModelRejected``.
    """
    from certify.convert import to_torch
    from certify.load import load_onnx
    from certify.summary import summarize
    from certify.verify import verify_conversion

    cfg = load_config(config)
    run = _Run(progress, cancelled)
    data, default_name = _read(model_source)
    digest = hashlib.sha256(data).hexdigest()

    started = time.perf_counter()
    run.tick("load", 0.0, "parsing and checking the model")
    model = load_onnx(data, input_shapes=cfg["input_shapes"])
    summary = summarize(model)
    run.done("load", started)

    started = time.perf_counter()
    run.tick("convert", 0.0, "converting to PyTorch")
    module = to_torch(model)
    run.done("convert", started)

    started = time.perf_counter()
    run.tick("conversion_check", 0.0, "comparing with onnxruntime")
    conversion = verify_conversion(model, module, input_range=tuple(cfg["input_range"]), seed=cfg["seed"])
    run.done("conversion_check", started)

    for stage in ("bounds", "attacks"):
        started = time.perf_counter()
        run.done(stage, started, "skipped", "not available in this version")

    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": model_name or default_name, "digest": {"sha256": digest}}],
        "predicateType": "https://lipcert.dev/robustness-report/v0",
        "predicate": {"model": summary, "conversion": conversion, "config": cfg, "stages": run.stages},
    }
    return PipelineResult(statement=statement, envelope=None, stages=run.stages)
