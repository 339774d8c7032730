"""GET /v1/reports?model=sha256:...: the latest signed report for a model digest (what a deployment gate asks)."""

from __future__ import annotations

from flask_smorest import Blueprint
from marshmallow import RAISE

from service.api.jobs import envelope_response
from service.context import services, tenant
from service.problems import ApiProblem
from service.schemas import ReportQuerySchema

blp = Blueprint("reports", __name__, url_prefix="/v1/reports", description="Signed reports")


@blp.route("", methods=["GET"])
@blp.arguments(ReportQuerySchema(), location="query", unknown=RAISE)
@blp.doc(responses={"200": {"description": "the signed report (a DSSE envelope)",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}}}}})
def latest_report(query):
    """The newest report of a succeeded job for this model digest (header X-Lipcert-Job names the job)."""
    job_id = services().records.latest_report_job(tenant().name, query["model"])
    if job_id is None:
        raise ApiProblem(404, "not_found", f"no report for {query['model']}")
    return envelope_response(job_id)
