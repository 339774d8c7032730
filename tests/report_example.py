"""An illustrative predicate with made-up numbers, for the tests.

It satisfies the schema and has the shape the pipeline produces: a small convolutional classifier with every stage
run, or (``skipped_stages=True``) one where the data-dependent stages could not run.
"""

from __future__ import annotations

from certify.report.statement import skipped, utc_now

_WEIGHTS_SHA256 = "5" * 64
_DATASET_SHA256 = "d" * 64


def _layers() -> list[dict]:
    rows = [
        ("conv1", "Conv", [1, 16, 28, 28], 3.02, 3.12, "power iteration on the conv operator", False, 41.0, None),
        ("bn1", "BatchNormalization", [1, 16, 28, 28], 1.91, 1.91, "exact: max |gamma/sqrt(var+eps)|", True, 0.2,
         "conv1"),
        ("relu1", "Relu", [1, 16, 28, 28], 1.0, 1.0, "exact", True, 0.0, None),
        ("pool1", "MaxPool", [1, 16, 14, 14], 1.0, 1.0, "exact: non-overlapping windows", True, 0.1, None),
        ("conv2", "Conv", [1, 32, 14, 14], 4.37, 4.55, "power iteration on the conv operator", False, 65.3, None),
        ("relu2", "Relu", [1, 32, 14, 14], 1.0, 1.0, "exact", True, 0.0, None),
        ("flatten", "Flatten", [1, 6272], 1.0, 1.0, "exact", True, 0.0, None),
        ("fc", "Gemm", [1, 10], 2.18, 2.18, "exact: largest singular value (SVD)", True, 3.9, None),
    ]
    out = []
    for node, op, shape, lower, upper, method, exact, ms, fused in rows:
        out.append({"node": node, "op": op, "shape": shape, "lower": lower, "upper": upper,
                    "ratio": round(upper / lower, 4), "method": method, "exact": exact, "ms": ms,
                    "reason": None, "fused_into": fused})
    return out


def _model() -> dict:
    return {
        "opset": 17, "ir_version": 8, "producer": "pytorch 2.13.0", "nodes": 8, "parameters": 68_906,
        "inputs": [{"name": "input", "shape": ["batch", 1, 28, 28], "dtype": "float"}],
        "outputs": [{"name": "logits", "shape": ["batch", 10], "dtype": "float"}],
        "operators": {"BatchNormalization": 1, "Conv": 2, "Flatten": 1, "Gemm": 1, "MaxPool": 1, "Relu": 2},
        "unsupported_operators": {},
    }


def _environment() -> dict:
    return {"lipcert": "0.1.0", "torch": "2.13.0", "onnx": "1.23.0", "onnxruntime": "1.32.0", "python": "3.11.9",
            "device": "cpu", "seed": 0}


def _attacks() -> dict:
    def rate(accuracy, clean=0.984):
        return round(1 - accuracy / clean, 4)

    def cell(worst, pgd, fgsm):
        return {"robust_accuracy": worst, "success_rate": rate(worst),
                "per_attack": {"pgd": {"robust_accuracy": pgd, "success_rate": rate(pgd)},
                               "fgsm": {"robust_accuracy": fgsm, "success_rate": rate(fgsm)}}}

    return {
        "preset": "standard",
        "attacks_run": ["pgd", "fgsm"],
        "samples": 500,
        "clean_accuracy": 0.984,
        "results": {"l2": {"0.5": cell(0.902, 0.902, 0.95), "1.0": cell(0.71, 0.71, 0.842)},
                    "linf": {"0.03": cell(0.79, 0.79, 0.88), "0.1": cell(0.216, 0.216, 0.51)}},
        "minimal_perturbation": {"l2": {"attack": "pgd", "count": 492, "mean": 1.42, "median": 1.37, "min": 0.21,
                                        "max": 3.9}},
        "sanity_checks": [
            {"name": "eps_zero_matches_clean", "passed": True, "detail": "robust accuracy at eps 0 equals clean"},
            {"name": "monotone_in_eps", "passed": True, "detail": None},
            {"name": "attack_beats_certified", "passed": True,
             "detail": "attacked accuracy is never below certified accuracy"},
        ],
        "warnings": [],
    }


def example_predicate(*, created: str | None = None, skipped_stages: bool = False) -> dict:
    """A schema-valid predicate; ``created`` defaults to now."""
    stage_names = ("load", "convert", "conversion_check", "bounds", "certified", "attacks", "report")
    predicate = {
        "created": created or utc_now(),
        "model": _model(),
        "dataset": {"sha256": _DATASET_SHA256, "samples": 500, "name": "mnist-test-500.npz"},
        "conversion": {"max_abs_diff": 2.4e-06, "max_rel_diff": 3.1e-07, "batch": 2, "seed": 0,
                       "input_range": [0.0, 1.0], "status": "ok", "tolerance": 1.2e-04, "first_divergent": None,
                       "amplification": None, "nodes": 12, "nodes_checked": 12},
        "converter": {"version": "0.1.0", "weights_sha256": _WEIGHTS_SHA256},
        "bounds": {"norm": "l2", "layers": _layers(),
                   "network": {"product": 113.9, "upper": 71.6, "lower": 9.8, "ratio": 7.306,
                               "method": "layer products with fused conv+bn", "reason": None}},
        "certified": {"clean_accuracy": 0.984, "samples": 500, "method": "margin / (sqrt(2) * L)",
                      "accuracy": {"l2": {"0.01": 0.962, "0.05": 0.402, "0.1": 0.05}}},
        "attacks": _attacks(),
        "policy": None,
        "config": {"norms": ["l2", "linf"], "epsilons": [0.01, 0.05, 0.1], "attacks": "standard",
                   "input_range": [0.0, 1.0], "samples": 500, "seed": 0, "time_budget_s": 3600.0,
                   "device": "cpu", "input_shapes": {}, "policy": None},
        "environment": _environment(),
        "timings": {name: 0.5 for name in stage_names},
        "stages": [{"stage": name, "status": "done", "seconds": 0.5, "reason": None} for name in stage_names],
    }
    if skipped_stages:
        reason = "no dataset was given"
        predicate.update(dataset=None, certified=skipped(reason), attacks=skipped(reason))
        for stage in predicate["stages"]:
            if stage["stage"] in ("certified", "attacks"):
                stage.update(status="skipped", seconds=0.0, reason=reason)
    return predicate
