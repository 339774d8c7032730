"""The one pipeline the CLI and the worker both run.

load safely -> convert -> check the conversion against onnxruntime -> Lipschitz certificate -> certified accuracy
-> attacks (and transfer) -> analyses -> VNN-LIB properties -> assemble the report -> evaluate policy -> sign. Each
stage returns a typed result (:mod:`certify.results`); :func:`certify.report.body.report_body` turns them into the
report. A stage that cannot run (no dataset, attacks switched off) is recorded as skipped with its reason, never
faked. Progress, cancellation and the time budget go through one :class:`certify.tracker.Tracker`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from certify.config import load_config
from certify.datasets import load_dataset
from certify.errors import ModelRejected
from certify.results import Attacked, Bounds, Certified, Converted, Loaded, Results, Skipped
from certify.tracker import Cancelled, DeadlineExceeded, ProgressFn, Tracker

__all__ = ["STAGES", "Cancelled", "DeadlineExceeded", "PipelineResult", "ProgressFn", "run_pipeline"]

STAGES = ("load", "convert", "conversion_check", "bounds", "certified", "attacks", "transfer", "units", "properties",
          "report")
NO_DATASET = "no dataset was given"


@dataclass
class PipelineResult:
    statement: dict  # the in-toto statement (unsigned)
    envelope: dict | None  # the DSSE envelope, when a signer was given
    stages: list[dict] = field(default_factory=list)  # [{"stage", "status", "seconds", "reason"}]


@dataclass
class _Job:
    """What every stage reads: the validated configuration, the device, the run's tracker."""

    cfg: dict
    device: str
    run: Tracker

    @property
    def input_range(self) -> tuple:
        return tuple(self.cfg["input_range"])

    def skip(self, stage: str, reason: str) -> Skipped:
        """End a stage that cannot run; its report section says why."""
        self.run.finish(stage, "skipped", reason)
        return Skipped(reason)


def _read_model(source) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), "model.onnx"
    try:
        with open(source, "rb") as f:
            return f.read(), os.path.basename(os.fspath(source))
    except OSError as e:
        raise ModelRejected("file_not_found", f"cannot read {source}: {e.strerror}") from None


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelRejected("invalid_config", f"device {name} requested but CUDA is not available")
    return name


def _input_shapes(model) -> list[tuple[int, ...]]:
    """Each input's per-sample shape (batch dimension left out)."""
    from certify.verify import input_specs

    return [tuple(spec[1][1:]) for spec in input_specs(model, batch=1)]


def _one_input_shape(model) -> tuple[int, ...]:
    shapes = _input_shapes(model)
    if len(shapes) != 1:
        raise ModelRejected("unsupported_model", f"a classifier with one input is expected, this model has "
                            f"{len(shapes)}")
    return shapes[0]


def _load(job: _Job, data: bytes, name: str, dataset) -> Loaded:
    from certify import preprocess
    from certify.load import load_onnx
    from certify.summary import summarize

    cfg = job.cfg
    job.run.start("load", "parsing and checking the model")
    model = preprocess.apply(load_onnx(data, input_shapes=cfg["input_shapes"]), cfg["preprocessing"],
                             cfg["input_shapes"])
    loaded = Loaded(data=data, name=name, model=model, summary=summarize(model), input_shape=_one_input_shape(model))
    if dataset is not None:
        x, y, loaded.dataset = load_dataset(dataset, loaded.input_shape, cfg["samples"], job.input_range)
        loaded.samples = (x, y)
    job.run.finish("load")
    return loaded


def _convert(job: _Job, loaded: Loaded) -> Converted:
    from certify.convert import CONVERTER_VERSION, to_torch
    from certify.report.statement import weights_sha256

    job.run.start("convert", "converting to PyTorch")
    module = to_torch(loaded.model)
    converter = {"version": CONVERTER_VERSION, "weights_sha256": weights_sha256(module.state_dict().items())}
    job.run.finish("convert")
    return Converted(module, converter)


def _check_conversion(job: _Job, loaded: Loaded, converted: Converted) -> dict:
    from certify.verify import mismatch_message, verify_conversion

    job.run.start("conversion_check", "comparing with onnxruntime")
    conversion = verify_conversion(loaded.model, converted.module, input_range=job.input_range, seed=job.cfg["seed"])
    if conversion["status"] == "mismatch":
        raise ModelRejected("conversion_mismatch", mismatch_message(conversion))
    job.run.finish("conversion_check")
    return conversion


def _bounds(job: _Job, loaded: Loaded, converted: Converted) -> Bounds:
    from certify.lipschitz import certificate

    cfg, run = job.cfg, job.run
    run.start("bounds", "Lipschitz bounds per layer")
    bounds = Bounds(norms=list(cfg["norms"]), certificates={})
    for i, norm in enumerate(bounds.norms):
        bounds.certificates[norm] = certificate(
            converted.module, loaded.input_shape, dataset=loaded.samples, norm=norm, epsilons=cfg["epsilons"],
            samples=cfg["samples"], seed=cfg["seed"], input_range=job.input_range,
            on_analysis=lambda a, n=norm: bounds.analyses.__setitem__(n, a),
            progress=run.part("bounds", i / len(bounds.norms), (i + 1) / len(bounds.norms)))
    run.finish("bounds")
    return bounds


def _certify(job: _Job, loaded: Loaded, converted: Converted, bounds: Bounds) -> Certified | Skipped:
    from certify import verdicts
    from certify.lipschitz.network import pair_bounds

    if loaded.samples is None:
        return job.skip("certified", NO_DATASET)
    cfg, run, norms = job.cfg, job.run, bounds.norms
    run.start("certified", "certified accuracy")
    by_norm = {}
    for i, norm in enumerate(norms):
        by_norm[norm] = verdicts.certify_norm(
            converted.module, *loaded.samples, norm, cfg["epsilons"], cfg["certifiers"], bounds.certificates[norm],
            job.input_range, device=job.device, time_budget=run.remaining() / 2,
            global_pairs=pair_bounds(bounds.analyses[norm]),
            progress=run.part("certified", i / len(norms), (i + 1) / len(norms)))
    converted.module.to("cpu")
    run.finish("certified")
    return Certified(by_norm)


def _attack(job: _Job, loaded: Loaded, converted: Converted, certified: Certified | Skipped,
            transfer_to) -> Attacked | Skipped:
    from certify.robustness import SoundnessError, evaluate

    cfg, module = job.cfg, converted.module
    if loaded.samples is None:
        return job.skip("attacks", NO_DATASET)
    if cfg["attacks"] == "none":
        return job.skip("attacks", "attacks were switched off (attacks: none)")
    job.run.start("attacks", "adversarial attacks")
    try:
        result = evaluate(module.to(job.device), *loaded.samples, norms=cfg["norms"], epsilons=cfg["epsilons"],
                          attacks=cfg["attacks"], input_range=job.input_range, seed=cfg["seed"], device=job.device,
                          tracker=job.run.span("attacks"), certified_radii=certified.radii())
    except SoundnessError as e:
        raise RuntimeError(f"soundness check failed: {e}") from e
    finally:
        module.to("cpu")
    job.run.finish("attacks")
    return Attacked(result, _transfer(job, loaded, module, transfer_to) if transfer_to else [])


def _transfer(job: _Job, loaded: Loaded, module, targets) -> list[dict]:
    """Adversarial examples crafted on ``module`` (PGD), evaluated on each target model."""
    from certify.convert import to_torch
    from certify.load import load_onnx
    from certify.robustness import transfer

    cfg, run = job.cfg, job.run
    run.start("transfer", "transfer to other models")
    out = []
    for i, source in enumerate(targets):
        data, name = _read_model(source)
        target_model = load_onnx(data, input_shapes=cfg["input_shapes"])
        if _input_shapes(target_model) != [loaded.input_shape]:
            raise ModelRejected("transfer_model_mismatch", f"transfer target {name} does not take inputs of shape "
                                f"{list(loaded.input_shape)}")
        target = to_torch(target_model)
        span = run.span("transfer", i / len(targets), (i + 1) / len(targets))
        results = {norm: transfer(module, target, *loaded.samples, norm=norm, epsilons=cfg["epsilons"],
                                  attack="pgd", input_range=job.input_range, seed=cfg["seed"], device=job.device,
                                  tracker=span)
                   for norm in cfg["norms"]}
        out.append({"target": {"name": name, "sha256": hashlib.sha256(data).hexdigest()}, "results": results})
    run.finish("transfer")
    return out


def _units(job: _Job, loaded: Loaded, converted: Converted) -> dict | Skipped | None:
    """Szegedy et al.'s first finding, measured: are the last hidden layer's units more coherent than random
    directions? Recorded under ``analyses.units``; None when not asked for."""
    from certify.units import report_section, units_vs_random

    if "units" not in job.cfg["analyses"]:
        return None
    if loaded.samples is None:
        return job.skip("units", NO_DATASET)
    job.run.start("units", "units versus random directions")
    x, y = loaded.samples
    try:
        result = units_vs_random(converted.module, x, y, seed=job.cfg["seed"], top_n=min(8, len(x)),
                                 progress=job.run.part("units"))
    except ModelRejected as e:  # no hidden layer, too few samples: recorded, not fatal
        return job.skip("units", e.message)
    job.run.finish("units")
    return report_section(result, x)


def _properties(job: _Job, loaded: Loaded) -> list | None:
    """Decide the job's VNN-LIB properties on the model as uploaded; None when the job asked for none."""
    import time

    from certify.properties import decide_properties, parse_specs

    if not job.cfg["properties"]:
        return None
    specs = parse_specs(job.cfg["properties"])
    job.run.start("properties", f"deciding {len(specs)} VNN-LIB properties")
    part = job.run.part("properties")
    results = decide_properties(loaded.data, specs, job.cfg["property_timeout_s"], seed=job.cfg["seed"],
                                deadline=time.monotonic() + job.run.remaining(),
                                on_property=lambda k, n: part(k / n, f"{k} of {n} properties decided"))
    job.run.finish("properties")
    return results


def _measure(job: _Job, data: bytes, name: str, dataset, transfer_to) -> Results:
    """Every measuring stage, in order."""
    loaded = _load(job, data, name, dataset)
    converted = _convert(job, loaded)
    conversion = _check_conversion(job, loaded, converted)
    bounds = _bounds(job, loaded, converted)
    certified = _certify(job, loaded, converted, bounds)
    attacks = _attack(job, loaded, converted, certified, transfer_to)
    units = _units(job, loaded, converted)
    properties = _properties(job, loaded)
    return Results(config=job.cfg, device=job.device, loaded=loaded, converted=converted, conversion=conversion,
                   bounds=bounds, certified=certified, attacks=attacks, units=units, properties=properties)


def _report(job: _Job, results: Results, model_name: str | None) -> dict:
    """The report stage: the predicate (with the policy's verdict) in an in-toto statement."""
    from certify.report.body import report_body
    from certify.report.statement import build_statement

    job.run.start("report", "assembling the report")
    predicate = report_body(results, job.run.stages)
    job.run.finish("report")
    predicate["timings"] = job.run.timings()
    loaded = results.loaded
    return build_statement(model_name=model_name or loaded.name, model_sha256=hashlib.sha256(loaded.data).hexdigest(),
                           predicate=predicate)


def run_pipeline(
    model_source,
    config: dict | None = None,
    dataset=None,
    progress: ProgressFn | None = None,
    cancelled: Callable[[], bool] | None = None,
    signer=None,
    model_name: str | None = None,
    transfer_to=(),
) -> PipelineResult:
    """Run every stage on ``model_source`` (path or bytes) and ``dataset`` (.npz path/bytes or None).

    ``transfer_to``: other models (paths or bytes) on which adversarial examples crafted on this one are evaluated
    (Szegedy et al.'s transfer finding); recorded under ``attacks.transfer``.

    ``progress(stage, fraction, message)`` is called at every progress point; ``cancelled()`` is checked there too
    and raises :class:`Cancelled`. Refusals (bad model, dataset, config, policy) raise ``ModelRejected``; a run past
    its time budget raises :class:`DeadlineExceeded` (a ``ModelRejected`` with code ``time_budget_exceeded``).
    With a ``signer`` the statement is signed into a DSSE envelope.
    """
    from certify.report.dsse import sign_statement

    cfg = load_config(config)
    job = _Job(cfg, _device(cfg["device"]), Tracker(progress, cancelled, cfg["time_budget_s"]))
    data, name = _read_model(model_source)
    statement = _report(job, _measure(job, data, name, dataset, transfer_to), model_name)
    envelope = sign_statement(statement, signer) if signer is not None else None
    return PipelineResult(statement=statement, envelope=envelope, stages=job.run.stages)
