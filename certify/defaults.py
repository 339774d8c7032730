"""The defaults and fixed names of a job, without the schema machinery, so the command line can show and check them
before importing anything heavy. ``certify.config`` validates jobs against them.
"""

from __future__ import annotations

from certify.errors import ModelRejected

NORMS = ("l2", "linf")
# Each attack preset, weakest first: the attacks it runs as (name, parameters); certify.attacks builds them.
ATTACK_PRESETS: dict[str, list[tuple[str, dict]]] = {
    "none": [],
    "quick": [("fgsm", {}), ("pgd", {"steps": 20})],
    "standard": [("apgd-ce", {"steps": 100}), ("apgd-dlr", {"steps": 100}), ("square", {"queries": 1000})],
}
ATTACK_PRESETS["thorough"] = ATTACK_PRESETS["standard"] + [
    ("pgd", {"steps": 100, "restarts": 5, "rel_step": 0.1, "schedule": "cosine"}), ("cw", {}), ("deepfool", {})]
# The names certify.attacks registers (kept here so validating a config needs no torch; a test keeps them equal).
ATTACK_NAMES = ("fgsm", "pgd", "apgd-ce", "apgd-dlr", "square", "cw", "deepfool", "lbfgs")
# "global": the Lipschitz certificate; the rest: certify.local.samples.METHODS (a test keeps them equal), so checking a
# config needs no torch.
CERTIFIERS = ("global", "ibp", "crown", "local-lipschitz", "alpha-crown")
# The defaults of a job, wherever it is started (``lipcert certify``, ``lipcert submit``, POST /v1/jobs).
DEFAULTS = {"norms": ("l2",), "epsilons": (0.1,), "attacks": "quick", "input_range": (0.0, 1.0), "samples": 200,
            "seed": 0, "time_budget_s": 3600.0, "device": "auto", "certifiers": CERTIFIERS}
NO_DATASET_WARNING = ("no dataset was given: certified accuracy and the attacks were skipped; the report holds only "
                      "the Lipschitz bounds (pass a .npz with x and y)")


def check_input_span(x_min: float, x_max: float, input_range) -> None:
    """Refuse data outside the declared input range: raw pixels in [0, 255] against the default [0, 1] would make
    every eps meaningless."""
    lo, hi = (float(v) for v in input_range)
    if x_min < lo or x_max > hi:
        raise ModelRejected("input_out_of_range", f"x spans [{x_min:g}, {x_max:g}], outside the declared input range "
                            f"[{lo:g}, {hi:g}]: declare the range the data is in (--input-range LO,HI, e.g. 0,255 for "
                            "raw pixels, with --scale/--mean/--std for the model's normalisation) or rescale x")


def job_warnings(has_dataset: bool) -> list[str]:
    """What a job will not measure, said up front (the job record) and in the report."""
    return [] if has_dataset else [NO_DATASET_WARNING]
