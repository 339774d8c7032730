"""The job configuration, validated once with marshmallow; the CLI, the pipeline and the API share it."""

from __future__ import annotations

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from certify.errors import ModelRejected

NORMS = ("l2", "linf")
ATTACK_PRESETS = ("none", "quick", "standard", "thorough")
# the names certify.attacks registers (kept here so validating a config needs no torch; a test keeps them equal)
ATTACK_NAMES = ("fgsm", "pgd", "apgd-ce", "apgd-dlr", "square", "cw", "deepfool", "lbfgs")


class JobConfigSchema(Schema):
    class Meta:
        unknown = RAISE

    norms = fields.List(fields.String(validate=validate.OneOf(NORMS)), load_default=lambda: ["l2"],
                        validate=validate.Length(min=1, max=2))
    epsilons = fields.List(fields.Float(validate=validate.Range(min=0, max=1e3, min_inclusive=False)),
                           load_default=lambda: [0.1], validate=validate.Length(min=1, max=32))
    attacks = fields.Raw(load_default="quick", metadata={"description": "a preset name or a list of attack names"})
    input_range = fields.List(fields.Float(), load_default=lambda: [0.0, 1.0], validate=validate.Length(equal=2))
    samples = fields.Integer(load_default=200, validate=validate.Range(min=1, max=100_000))
    seed = fields.Integer(load_default=0, validate=validate.Range(min=0, max=2**31 - 1))
    time_budget_s = fields.Float(load_default=3600.0, validate=validate.Range(min=1, max=7 * 24 * 3600))
    device = fields.String(load_default="auto", validate=validate.Regexp(r"^(auto|cpu|cuda(:\d+)?)$"))
    input_shapes = fields.Dict(keys=fields.String(), values=fields.List(fields.Integer(validate=validate.Range(min=1))),
                               load_default=dict)
    policy = fields.Dict(load_default=None, allow_none=True)

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
        attacks = data["attacks"]
        if isinstance(attacks, str):
            if attacks not in ATTACK_PRESETS:
                raise ValidationError(f"unknown preset {attacks!r}; one of {', '.join(ATTACK_PRESETS)}", "attacks")
        elif not (isinstance(attacks, list) and attacks and all(isinstance(a, str) for a in attacks)):
            raise ValidationError("a preset name or a non-empty list of attack names", "attacks")
        elif unknown := [a for a in attacks if a not in ATTACK_NAMES]:
            raise ValidationError(f"unknown attack {unknown[0]!r}; one of {', '.join(ATTACK_NAMES)}", "attacks")


def load_config(data: dict | None) -> dict:
    """Validate a job configuration; errors become ``ModelRejected("invalid_config")`` naming each field."""
    try:
        return JobConfigSchema().load(data or {})
    except ValidationError as e:
        detail = "; ".join(f"{k}: {v}" for k, v in sorted(e.normalized_messages().items()))
        raise ModelRejected("invalid_config", detail) from None
