"""The one pipeline the CLI and the worker both run.

load safely -> convert -> check the conversion against onnxruntime -> Lipschitz certificate -> attacks ->
assemble the report -> evaluate policy -> sign. A stage that cannot run (no dataset, attacks switched off) is
recorded as skipped with its reason, never faked.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from certify.config import job_warnings, load_config
from certify.datasets import load_dataset
from certify.errors import ModelRejected
from certify.tracker import Cancelled, DeadlineExceeded, ProgressFn, Tracker

__all__ = ["STAGES", "Cancelled", "DeadlineExceeded", "PipelineResult", "ProgressFn", "run_pipeline"]

STAGES = ("load", "convert", "conversion_check", "bounds", "certified", "attacks", "transfer", "units", "report")


@dataclass
class PipelineResult:
    statement: dict  # the in-toto statement (unsigned)
    envelope: dict | None  # the DSSE envelope, when a signer was given
    stages: list[dict] = field(default_factory=list)  # [{"stage", "status", "seconds", "reason"}]


def _skip(run: Tracker, stage: str, reason: str) -> dict:
    """End a stage that cannot run; its report section says why."""
    from certify.report.statement import skipped

    run.finish(stage, "skipped", reason)
    return skipped(reason)


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


def _eps_key(eps: float) -> str:
    return repr(float(eps))


def _attack_section(result: dict, cfg: dict) -> dict:
    """The robustness evaluation, in the report's shape."""
    results, minimal = {}, {}
    for norm, res in result["results"].items():
        cells = {}
        for i, eps in enumerate(res["epsilons"]):
            cells[_eps_key(eps)] = {
                "robust_accuracy": res["robust_accuracy"][i],
                "success_rate": res["success_rate"][i],
                "per_attack": {name: {"robust_accuracy": a["robust_accuracy"][i], "success_rate": a["success_rate"][i]}
                               for name, a in res["per_attack"].items()},
            }
        results[norm] = cells
        stats = res["minimal_perturbation"]
        minimal[norm] = dict(stats, count=stats["n_found"])
    return {
        "preset": cfg["attacks"] if isinstance(cfg["attacks"], str) else None,
        "attacks_run": sorted({r["attack"] for r in result["runs"]}) if result.get("runs") else
        [a["name"] for a in result["attacks"]],
        "attacks": result["attacks"],
        "samples": result["n"],
        "clean_accuracy": result["clean_accuracy"],
        "results": results,
        "minimal_perturbation": minimal,
        "examples": {norm: res["examples"] for norm, res in result["results"].items()},
        "sanity_checks": result["sanity_checks"],
        "warnings": result["warnings"],
        "skipped": result["skipped"],
    }


def _transfer(run: Tracker, module, samples, targets, cfg: dict, input_shape: tuple, device: str) -> list[dict]:
    """Adversarial examples crafted on ``module`` (PGD), evaluated on each target model."""
    from certify.convert import to_torch
    from certify.load import load_onnx
    from certify.robustness import transfer
    from certify.verify import input_specs

    run.start("transfer", "transfer to other models")
    out = []
    for i, source in enumerate(targets):
        data, name = _read_model(source)
        target_model = load_onnx(data, input_shapes=cfg["input_shapes"])
        specs = input_specs(target_model, batch=1)
        if len(specs) != 1 or tuple(specs[0][1][1:]) != tuple(input_shape):
            raise ModelRejected("transfer_model_mismatch", f"transfer target {name} does not take inputs of shape "
                                f"{list(input_shape)}")
        target = to_torch(target_model)
        results = {}
        for norm in cfg["norms"]:
            results[norm] = transfer(
                module, target, samples[0], samples[1], norm=norm, epsilons=cfg["epsilons"], attack="pgd",
                input_range=tuple(cfg["input_range"]), seed=cfg["seed"], device=device,
                tracker=run.span("transfer", i / len(targets), (i + 1) / len(targets)))
        out.append({"target": {"name": name, "sha256": hashlib.sha256(data).hexdigest()}, "results": results})
    run.finish("transfer")
    return out


def _units(run: Tracker, module, samples, cfg: dict) -> dict:
    """Szegedy et al.'s first finding, measured: are the last hidden layer's units more coherent than random
    directions? Recorded under ``analyses.units``."""
    from certify.units import report_section, units_vs_random

    if samples is None:
        return _skip(run, "units", "no dataset was given")
    run.start("units", "units versus random directions")
    x, y = samples
    try:
        result = units_vs_random(module, x, y, seed=cfg["seed"], top_n=min(8, len(x)), progress=run.part("units", 0, 1))
    except ModelRejected as e:  # no hidden layer, too few samples: recorded, not fatal
        from certify.report.statement import skipped

        run.finish("units", "skipped", e.message)
        return skipped(e.message)
    run.finish("units")
    return report_section(result, x)


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
    and raises :class:`Cancelled`. Refusals (bad model, dataset, config, policy, time budget) raise
    ``ModelRejected``. With a ``signer`` the statement is signed into a DSSE envelope.
    """
    import torch

    from certify import preprocess
    from certify.convert import CONVERTER_VERSION, to_torch
    from certify.lipschitz import certificate
    from certify.load import load_onnx
    from certify.report.dsse import sign_statement
    from certify.report.policy import evaluate_policy
    from certify.report.statement import build_statement, environment, utc_now, weights_sha256
    from certify.robustness import SoundnessError, evaluate
    from certify.summary import summarize
    from certify.verify import input_specs, mismatch_message, verify_conversion

    cfg = load_config(config)
    device = _device(cfg["device"])
    run = Tracker(progress, cancelled, cfg["time_budget_s"])
    data, default_name = _read_model(model_source)
    input_range = tuple(cfg["input_range"])

    run.start("load", "parsing and checking the model")
    model = preprocess.apply(load_onnx(data, input_shapes=cfg["input_shapes"]), cfg["preprocessing"],
                             cfg["input_shapes"])
    summary = summarize(model)
    specs = input_specs(model, batch=1)
    if len(specs) != 1:
        raise ModelRejected("unsupported_model",
                            f"a classifier with one input is expected, this model has {len(specs)}")
    input_shape = tuple(specs[0][1][1:])
    samples = None
    dataset_record = None
    if dataset is not None:
        x, y, dataset_record = load_dataset(dataset, input_shape, cfg["samples"], input_range)
        samples = (x, y)
    run.finish("load")

    run.start("convert", "converting to PyTorch")
    module = to_torch(model)
    converter = {"version": CONVERTER_VERSION, "weights_sha256": weights_sha256(module.state_dict().items())}
    run.finish("convert")

    run.start("conversion_check", "comparing with onnxruntime")
    conversion = verify_conversion(model, module, input_range=input_range, seed=cfg["seed"])
    if conversion["status"] == "mismatch":
        raise ModelRejected("conversion_mismatch", mismatch_message(conversion))
    run.finish("conversion_check")

    run.start("bounds", "Lipschitz bounds per layer")
    certificates, lipschitz_analyses = {}, {}
    norms = cfg["norms"]
    for i, norm in enumerate(norms):
        certificates[norm] = certificate(
            module, input_shape, dataset=samples, norm=norm, epsilons=cfg["epsilons"], samples=cfg["samples"],
            seed=cfg["seed"], input_range=input_range,
            on_analysis=lambda a, n=norm: lipschitz_analyses.__setitem__(n, a),
            progress=run.part("bounds", i / len(norms), (i + 1) / len(norms)))
    first = certificates[norms[0]]
    bounds = {"norm": norms[0], "input_shape": first["input_shape"], "layers": first["layers"],
              "network": first["network"]}
    if len(norms) > 1:
        bounds["other_norms"] = {n: {"network": c["network"]} for n, c in certificates.items() if n != norms[0]}
    run.finish("bounds")

    if samples is None:
        certified = _skip(run, "certified", "no dataset was given")
    else:
        run.start("certified", "certified accuracy")
        from certify import verdicts
        from certify.lipschitz.network import pair_bounds

        by_norm = {}
        for i, norm in enumerate(norms):
            by_norm[norm] = verdicts.certify_norm(
                module, samples[0], samples[1], norm, cfg["epsilons"], cfg["certifiers"], certificates[norm],
                input_range, device=device, time_budget=run.remaining() / 2,
                global_pairs=pair_bounds(lipschitz_analyses[norm]),
                progress=run.part("certified", i / len(norms), (i + 1) / len(norms)))
        module.to("cpu")
        certified = {
            "clean_accuracy": first["certified"]["clean_accuracy"],
            "samples": first["certified"]["samples"],
            "method": "best sound method per sample: global (per-pair margin, less the float forward error bound, / "
                      "Lipschitz bound of the logit difference) or local bound propagation, less the same float error",
            "certifiers": list(cfg["certifiers"]),
            **verdicts.section(by_norm, cfg["epsilons"], _eps_key),
            "radius": {n: c["certified"]["radius"] for n, c in certificates.items()},
            "float_error": {n: {k: c["certified"]["float_error"][k] for k in ("max_at_sample", "max_growth")}
                            for n, c in certificates.items()},
        }
        local_layers = verdicts.layer_rows(by_norm, _eps_key)
        if any(local_layers.values()):
            bounds["local_layers"] = local_layers
        run.finish("certified")

    if samples is None:
        attacks = _skip(run, "attacks", "no dataset was given")
    elif cfg["attacks"] == "none":
        attacks = _skip(run, "attacks", "attacks were switched off (attacks: none)")
    else:
        run.start("attacks", "adversarial attacks")
        radii = {n: by_norm[n].radii() for n in norms}
        try:
            result = evaluate(
                module.to(device), samples[0], samples[1], norms=norms, epsilons=cfg["epsilons"],
                attacks=cfg["attacks"], input_range=input_range, seed=cfg["seed"], device=device,
                tracker=run.span("attacks"), certified_radii=radii)
        except SoundnessError as e:
            raise RuntimeError(f"soundness check failed: {e}") from e
        finally:
            module.to("cpu")
        attacks = _attack_section(result, cfg)
        run.finish("attacks")
        if transfer_to:
            attacks["transfer"] = _transfer(run, module, samples, transfer_to, cfg, input_shape, device)

    analyses = {"units": _units(run, module, samples, cfg)} if "units" in cfg["analyses"] else None
    run.start("report", "assembling the report")
    predicate = {
        "created": utc_now(),
        "model": summary,
        "dataset": dataset_record,
        "conversion": conversion,
        "converter": converter,
        "bounds": bounds,
        "certified": certified,
        "attacks": attacks,
        "policy": None,
        "config": cfg,
        "environment": environment(device=device if torch.cuda.is_available() or device == "cpu" else "cpu",
                                   seed=cfg["seed"]),
        "timings": {},
        "stages": run.stages,
        "warnings": job_warnings(samples is not None),
        "input": preprocess.describe(cfg["preprocessing"], input_range),
    }
    if analyses is not None:
        predicate["analyses"] = analyses
    if cfg["policy"] is not None:
        predicate["policy"] = evaluate_policy(cfg["policy"], predicate)
    run.finish("report")
    predicate["timings"] = run.timings()
    statement = build_statement(model_name=model_name or default_name,
                                model_sha256=hashlib.sha256(data).hexdigest(), predicate=predicate)
    envelope = sign_statement(statement, signer) if signer is not None else None
    return PipelineResult(statement=statement, envelope=envelope, stages=run.stages)
