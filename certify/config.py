"""The job configuration, validated once with marshmallow; the CLI, the pipeline and the API share it."""

from __future__ import annotations

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from certify.defaults import (  # noqa: F401  (re-exported: the names of a job configuration live with it)
    ATTACK_NAMES,
    ATTACK_PRESETS,
    CERTIFIERS,
    DEFAULTS,
    NO_DATASET_WARNING,
    NORMS,
    check_input_span,
    job_warnings,
)
from certify.errors import ModelRejected

# optional analyses a job may ask for (recorded under the report's ``analyses``)
ANALYSES = ("units",)


class PreprocessingSchema(Schema):
    """model input = (x * scale - mean) / std; mean and std per channel (or one value), x in input_range; the channels
    lie on ``channel_axis`` (1, channels first, unless -1 is given)."""

    class Meta:
        unknown = RAISE

    scale = fields.Float(load_default=1.0, validate=validate.Range(min=0, min_inclusive=False, max=1e6))
    mean = fields.List(fields.Float(), load_default=lambda: [0.0], validate=validate.Length(min=1, max=4096))
    std = fields.List(fields.Float(validate=validate.Range(min=1e-12, max=1e12)), load_default=lambda: [1.0],
                      validate=validate.Length(min=1, max=4096))
    channel_axis = fields.Integer(validate=validate.OneOf([1, -1]), metadata={
        "description": "the input axis that holds the channels: 1 (channels first, the default) or -1 (last)"})


class PropertyEntrySchema(Schema):
    """A VNN-LIB property to decide on the job's model: its name and the file's text."""

    class Meta:
        unknown = RAISE

    name = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9_.\-]{1,128}$", error="1-128 letters, "
                                                                  "digits, '_', '.' or '-'"))
    vnnlib = fields.String(required=True, validate=validate.Length(min=1, max=16 * 2**20),
                           metadata={"description": "the .vnnlib file's text"})


class JobConfigSchema(Schema):
    class Meta:
        unknown = RAISE

    norms = fields.List(fields.String(validate=validate.OneOf(NORMS)), load_default=lambda: list(DEFAULTS["norms"]),
                        validate=validate.Length(min=1, max=2))
    epsilons = fields.List(fields.Float(validate=validate.Range(min=0, max=1e3, min_inclusive=False)),
                           load_default=lambda: list(DEFAULTS["epsilons"]), validate=validate.Length(min=1, max=32))
    attacks = fields.Raw(load_default=DEFAULTS["attacks"],
                         metadata={"description": "a preset name or a list of attack names"})
    input_range = fields.List(fields.Float(), load_default=lambda: list(DEFAULTS["input_range"]),
                              validate=validate.Length(equal=2))
    samples = fields.Integer(load_default=DEFAULTS["samples"], validate=validate.Range(min=1, max=100_000))
    seed = fields.Integer(load_default=DEFAULTS["seed"], validate=validate.Range(min=0, max=2**31 - 1))
    time_budget_s = fields.Float(load_default=DEFAULTS["time_budget_s"],
                                 validate=validate.Range(min=1, max=7 * 24 * 3600))
    device = fields.String(load_default=DEFAULTS["device"], validate=validate.Regexp(r"^(auto|cpu|cuda(:\d+)?)$"))
    input_shapes = fields.Dict(keys=fields.String(), values=fields.List(fields.Integer(validate=validate.Range(min=1))),
                               load_default=dict)
    certifiers = fields.List(fields.String(validate=validate.OneOf(CERTIFIERS, error="unknown certifier {input!r}; "
                                                                   "one of " + ", ".join(CERTIFIERS))),
                             load_default=lambda: list(DEFAULTS["certifiers"]), validate=validate.Length(min=1),
                             metadata={"description": "which sound methods certify samples: global (Lipschitz) and "
                                                      "the local ibp, crown, local-lipschitz, alpha-crown"})
    policy = fields.Dict(load_default=None, allow_none=True)
    preprocessing = fields.Nested(PreprocessingSchema, load_default=None, allow_none=True,
                                  metadata={"description": "prepended to the model; eps and input_range are then "
                                                           "in raw (e.g. pixel) units"})
    properties = fields.List(fields.Nested(PropertyEntrySchema), load_default=list,
                             metadata={"description": "VNN-LIB properties to decide on the model as uploaded, each "
                                                      "holds / violated / unknown in the report (docs/vnnlib.md)"})
    property_timeout_s = fields.Float(load_default=60.0, validate=validate.Range(min=0.1, max=24 * 3600),
                                      metadata={"description": "time budget per property, within time_budget_s"})
    analyses = fields.List(fields.String(), load_default=list,
                           validate=validate.Length(max=len(ANALYSES)),
                           metadata={"description": "optional analyses, e.g. units (units versus random directions)"})

    @validates_schema
    def _check(self, data, **_):
        lo, hi = data["input_range"]
        if not lo < hi:
            raise ValidationError("lower end must be below upper end", "input_range")
        if data.get("policy") is not None:
            from certify.report.policy import PolicyError, load_policy

            try:
                load_policy(data["policy"])
            except PolicyError as e:
                raise ValidationError(str(e), "policy") from None
        if data["properties"]:
            from certify.properties import check_entries

            try:
                check_entries(data["properties"])
            except ModelRejected as e:
                raise ValidationError(e.message, "properties") from None
        if unknown := [a for a in data["analyses"] if a not in ANALYSES]:
            raise ValidationError(f"unknown analysis {unknown[0]!r}; one of {', '.join(ANALYSES)}", "analyses")
        attacks = data["attacks"]
        if isinstance(attacks, str):
            if attacks not in ATTACK_PRESETS:
                raise ValidationError(f"unknown preset {attacks!r}; one of {', '.join(ATTACK_PRESETS)}", "attacks")
        elif not (isinstance(attacks, list) and attacks and all(isinstance(a, str) for a in attacks)):
            raise ValidationError("a preset name or a non-empty list of attack names", "attacks")
        elif unknown := [a for a in attacks if a not in ATTACK_NAMES]:
            raise ValidationError(f"unknown attack {unknown[0]!r}; one of {', '.join(ATTACK_NAMES)}", "attacks")


def _words(messages) -> str:
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return "; ".join(messages)
    return str(messages)


def load_config(data: dict | None) -> dict:
    """Validate a job configuration; errors become ``ModelRejected("invalid_config")`` naming each field."""
    try:
        return JobConfigSchema().load(data or {})
    except ValidationError as e:
        detail = "; ".join(f"{k}: {_words(v)}" for k, v in sorted(e.normalized_messages().items()))
        raise ModelRejected("invalid_config", detail) from None
