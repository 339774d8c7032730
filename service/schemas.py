"""The shapes of the API, one marshmallow schema each; validation and /openapi.json both come from here.

The job request extends :class:`certify.config.JobConfigSchema`, so the job configuration fields are defined once.
"""

from __future__ import annotations

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from certify.config import JobConfigSchema, PropertyEntrySchema
from service.core.records import STATES

DIGEST = validate.Regexp(r"^sha256:[0-9a-f]{64}$", error="must be sha256:<64 hex digits>")


class ProblemSchema(Schema):
    """Every error body: RFC 9457 problem details (application/problem+json) with a stable ``code``."""

    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    code = fields.String(required=True)
    instance = fields.String(allow_none=True)
    errors = fields.Dict(keys=fields.String(), metadata={"description": "field -> messages, for invalid fields"})


class TensorSchema(Schema):
    name = fields.String()
    shape = fields.List(fields.Raw(), metadata={"description": "dimensions; null or a name for dynamic ones"})
    dtype = fields.String()


class ModelSchema(Schema):
    id = fields.String(metadata={"example": "sha256:" + "0" * 64})
    name = fields.String()
    size = fields.Integer()
    opset = fields.Integer()
    inputs = fields.List(fields.Nested(TensorSchema))
    outputs = fields.List(fields.Nested(TensorSchema))
    operators = fields.Dict(keys=fields.String(), values=fields.Integer())
    unsupported_operators = fields.Dict(keys=fields.String(), values=fields.Integer())
    supported = fields.Boolean()
    created_at = fields.String()


class DatasetSchema(Schema):
    id = fields.String()
    name = fields.String()
    size = fields.Integer()
    samples = fields.Integer()
    x_shape = fields.List(fields.Integer())
    x_dtype = fields.String()
    y_dtype = fields.String()
    classes = fields.Integer()
    x_min = fields.Float(metadata={"description": "smallest value in x (checked against a job's input_range)"})
    x_max = fields.Float()
    created_at = fields.String()


class PropertySchema(Schema):
    """An uploaded VNN-LIB file, parsed at upload."""

    id = fields.String()
    name = fields.String()
    size = fields.Integer()
    inputs = fields.Integer(metadata={"description": "input variables X_i (the model's input size)"})
    outputs = fields.Integer(metadata={"description": "output variables Y_j (the model's output size)"})
    cases = fields.Integer(metadata={"description": "input boxes, each with its unsafe output set"})
    created_at = fields.String()


class PageQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    cursor = fields.Integer(load_default=0, validate=validate.Range(min=0))


class PropertyPageSchema(Schema):
    items = fields.List(fields.Nested(PropertySchema))
    next = fields.String(allow_none=True)


class UploadQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    name = fields.String(validate=validate.Length(min=1, max=200), metadata={"description": "a display name"})


class JobPropertySchema(PropertyEntrySchema):
    """A job's property: the VNN-LIB text inline, or the id of one uploaded to /v1/properties."""

    vnnlib = fields.String(validate=validate.Length(min=1, max=16 * 2**20),
                           metadata={"description": "the .vnnlib file's text (or give property_id); stored at job "
                                     "creation as a property upload of the tenant (listed under /v1/properties), "
                                     "so the job document shows {name, property_id, size} instead of the text"})
    property_id = fields.String(validate=DIGEST, metadata={"description": "an uploaded property (or give vnnlib)"})

    @validates_schema
    def _one_source(self, data, **_):
        if ("vnnlib" in data) == ("property_id" in data):
            raise ValidationError("give exactly one of vnnlib (the file's text) and property_id (an upload)")


class JobCreateSchema(JobConfigSchema):
    """POST /v1/jobs: the model and dataset ids plus the job configuration."""

    class Meta:
        unknown = RAISE

    properties = fields.List(fields.Nested(JobPropertySchema), load_default=list,
                             metadata=JobConfigSchema._declared_fields["properties"].metadata)

    model = fields.String(required=True, validate=DIGEST)
    dataset = fields.String(load_default=None, allow_none=True, validate=DIGEST)
    transfer_to = fields.List(fields.String(validate=DIGEST), load_default=list, validate=validate.Length(max=8),
                              metadata={"description": "models to replay the attacks against"})
    webhook_url = fields.Url(load_default=None, allow_none=True, schemes={"http", "https"}, require_tld=False,
                             metadata={"description": "POSTed the job document when it ends"})


REQUEST_ONLY = ("model", "dataset", "transfer_to", "webhook_url")


class JobErrorSchema(Schema):
    code = fields.String()
    message = fields.String()


class StageSchema(Schema):
    stage = fields.String()
    status = fields.String()
    seconds = fields.Float()
    reason = fields.String()


class JobSchema(Schema):
    id = fields.String()
    state = fields.String(validate=validate.OneOf(STATES))
    stage = fields.String(allow_none=True)
    progress = fields.Float(metadata={"description": "0 to 1"})
    eta_s = fields.Float(allow_none=True, metadata={"description": "estimated seconds left"})
    message = fields.String(allow_none=True)
    model = fields.String()
    model_name = fields.String(allow_none=True, metadata={"description": "the file name given at upload"})
    dataset = fields.String(allow_none=True)
    config = fields.Dict(metadata={"description": "the job's configuration as run; each property is "
                                   "{name, property_id, size} (inline text was stored as an upload at creation; "
                                   "jobs created before that may still show {name, vnnlib})"})
    warnings = fields.List(fields.String(), metadata={"description": "what the job will not measure, and why"})
    transfer_to = fields.List(fields.String())
    webhook_url = fields.String(allow_none=True)
    attempts = fields.Integer()
    cancel_requested = fields.Boolean()
    stages = fields.List(fields.Nested(StageSchema))
    error = fields.Nested(JobErrorSchema, allow_none=True)
    created_at = fields.String()
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    updated_at = fields.String(allow_none=True)
    links = fields.Dict(keys=fields.String(), values=fields.String())


class JobListQuerySchema(PageQuerySchema):
    state = fields.String(validate=validate.OneOf(STATES))
    model = fields.String(validate=DIGEST)


class JobPageSchema(Schema):
    items = fields.List(fields.Nested(JobSchema))
    next = fields.String(allow_none=True)


class ReportQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    model = fields.String(required=True, validate=DIGEST)


class EnvelopeSchema(Schema):
    payloadType = fields.String()
    payload = fields.String(metadata={"description": "base64 of the canonical in-toto statement"})
    signatures = fields.List(fields.Dict())


class KeySchema(Schema):
    keyid = fields.String()
    kind = fields.String()
    public_pem = fields.String()


class KeyListSchema(Schema):
    keys = fields.List(fields.Nested(KeySchema))
