"""The report's predicate, from the typed results of a run (:mod:`certify.results`): the one place where results
become report fields, eps values become report keys (:func:`certify.report.schema.eps_key`), and the policy is
evaluated against the result."""

from __future__ import annotations

from certify import preprocess, verdicts
from certify.config import job_warnings
from certify.report.policy import evaluate_policy
from certify.report.schema import eps_key
from certify.report.statement import environment, skipped, utc_now
from certify.results import Attacked, Bounds, Certified, Results, Skipped

CERTIFIED_METHOD = ("best sound method per sample: global (per-pair margin, less the float forward error bound, / "
                    "Lipschitz bound of the logit difference) or local bound propagation, less the same float error")


def report_body(results: Results, stages: list[dict]) -> dict:
    """The predicate (``timings`` left empty for the caller, who knows when the report stage ends). ``stages`` is
    the run's stage list, kept by reference so that the report stage itself appears once it ends."""
    cfg = results.config
    predicate = {
        "created": utc_now(),
        "model": results.loaded.summary,
        "dataset": results.loaded.dataset,
        "conversion": results.conversion,
        "converter": results.converted.converter,
        "bounds": bounds_section(results.bounds, results.certified),
        "certified": _or_skipped(results.certified, lambda c: certified_section(c, results.bounds, cfg)),
        "attacks": _or_skipped(results.attacks, lambda a: attacks_section(a, cfg)),
        "policy": None,
        "config": recorded_config(cfg, results.properties),
        "environment": environment(device=results.device, seed=cfg["seed"]),
        "timings": {},
        "stages": stages,
        "warnings": job_warnings(results.loaded.samples is not None),
        "input": preprocess.describe(cfg["preprocessing"], tuple(cfg["input_range"])),
    }
    if results.units is not None:
        predicate["analyses"] = {"units": _or_skipped(results.units, lambda section: section)}
    if results.properties is not None:
        predicate["properties"] = {"timeout_s": cfg["property_timeout_s"],
                                   "results": [r.to_dict() for r in results.properties]}
    if cfg["policy"] is not None:
        predicate["policy"] = evaluate_policy(cfg["policy"], predicate)
    return predicate


def recorded_config(cfg: dict, properties: list | None) -> dict:
    """The configuration as the report records it: a property's text is named by the hash its result carries (the
    ``properties`` section), not copied."""
    if not properties:
        return cfg
    return dict(cfg, properties=[{"name": r.name, "sha256": r.sha256} for r in properties])


def _or_skipped(result, section) -> dict:
    return skipped(result.reason) if isinstance(result, Skipped) else section(result)


def bounds_section(bounds: Bounds, certified: Certified | Skipped) -> dict:
    """The main norm's per-layer and network bounds, the other norms' network bounds, the local layer bounds."""
    first = bounds.first
    out = {"norm": bounds.norms[0], "input_shape": first["input_shape"], "layers": first["layers"],
           "network": first["network"]}
    if len(bounds.norms) > 1:
        out["other_norms"] = {n: {"network": c["network"]} for n, c in bounds.certificates.items()
                              if n != bounds.norms[0]}
    if isinstance(certified, Certified):
        local_layers = verdicts.layer_rows(certified.by_norm, eps_key)
        if any(local_layers.values()):
            out["local_layers"] = local_layers
    return out


def certified_section(certified: Certified, bounds: Bounds, cfg: dict) -> dict:
    first = bounds.first["certified"]
    return {
        "clean_accuracy": first["clean_accuracy"],
        "samples": first["samples"],
        "method": CERTIFIED_METHOD,
        "certifiers": list(cfg["certifiers"]),
        **verdicts.section(certified.by_norm, cfg["epsilons"], eps_key),
        "radius": {n: c["certified"]["radius"] for n, c in bounds.certificates.items()},
        "float_error": {n: {k: c["certified"]["float_error"][k] for k in ("max_at_sample", "max_growth")}
                        for n, c in bounds.certificates.items()},
    }


def _attack_cells(res: dict) -> dict:
    """One norm's per-eps lists (:func:`certify.robustness.evaluate`) as the report's cells keyed by eps."""
    cells = {}
    for i, eps in enumerate(res["epsilons"]):
        cells[eps_key(eps)] = {
            "robust_accuracy": res["robust_accuracy"][i],
            "success_rate": res["success_rate"][i],
            "per_attack": {name: {"robust_accuracy": a["robust_accuracy"][i], "success_rate": a["success_rate"][i]}
                           for name, a in res["per_attack"].items()},
        }
    return cells


def attacks_section(attacked: Attacked, cfg: dict) -> dict:
    """The robustness evaluation, in the report's shape."""
    result = attacked.result
    by_norm = result["results"]
    out = {
        "preset": cfg["attacks"] if isinstance(cfg["attacks"], str) else None,
        "attacks_run": sorted({r["attack"] for r in result["runs"]}) if result.get("runs") else
        [a["name"] for a in result["attacks"]],
        "attacks": result["attacks"],
        "samples": result["n"],
        "clean_accuracy": result["clean_accuracy"],
        "results": {norm: _attack_cells(res) for norm, res in by_norm.items()},
        "minimal_perturbation": {norm: dict(res["minimal_perturbation"],
                                            count=res["minimal_perturbation"]["n_found"])
                                 for norm, res in by_norm.items()},
        "examples": {norm: res["examples"] for norm, res in by_norm.items()},
        "sanity_checks": result["sanity_checks"],
        "warnings": result["warnings"],
        "skipped": result["skipped"],
    }
    if attacked.transfer:
        out["transfer"] = attacked.transfer
    return out
