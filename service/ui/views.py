"""Routes of the dashboard: ``/`` (redirect), ``/ui/`` (the page) and ``POST /v1/render`` (a report as HTML)."""

from __future__ import annotations

from flask import Blueprint, Response, redirect, render_template, request

from service.context import services
from service.problems import ApiProblem

blueprint = Blueprint("ui", __name__, template_folder="templates", static_folder="static",
                      static_url_path="/ui/static")

# The dashboard runs only its own script; the report it shows is inline-styled HTML with data: images.
DASHBOARD_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                 "connect-src 'self'; frame-src 'self' blob:; base-uri 'none'; form-action 'none'; "
                 "frame-ancestors 'none'")
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def _secure(response: Response, csp: str) -> Response:
    response.headers["Content-Security-Policy"] = csp
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


def _too_large(limit: int) -> ApiProblem:
    return ApiProblem(413, "payload_too_large", f"a report is at most {limit} bytes", headers={"Connection": "close"})


@blueprint.route("/", methods=["GET"])
def root():
    return redirect("/ui/", code=302)


@blueprint.route("/ui/", methods=["GET"])
def dashboard():
    return _secure(Response(render_template("ui/dashboard.html")), DASHBOARD_CSP)


@blueprint.route("/v1/render", methods=["POST"])
def render_report():
    """The report page for the DSSE envelope in the body, verified against this service's public keys.

    It lives under /v1 so that the API's bearer authentication and rate limit apply to it like to every other call.
    ``?name=`` is the report's file name, used in the page's verification command.
    """
    from certify.report.dsse import MAX_ENVELOPE_BYTES, VerificationError, open_envelope, parse_json
    from certify.report.html import render_report_html

    if request.mimetype != "application/json":
        raise ApiProblem(415, "unsupported_media_type", "send the report (a DSSE envelope) as application/json")
    if (request.content_length or 0) > MAX_ENVELOPE_BYTES:
        raise _too_large(MAX_ENVELOPE_BYTES)
    data = request.stream.read(MAX_ENVELOPE_BYTES + 1)
    if len(data) > MAX_ENVELOPE_BYTES:
        raise _too_large(MAX_ENVELOPE_BYTES)
    try:
        document = parse_json(data, "report")
    except VerificationError as e:
        raise ApiProblem(400, e.code, e.message) from None
    verified_keyid = None
    if isinstance(document, dict) and "signatures" in document:
        try:
            _, verified_keyid = open_envelope(document, services().public_keys)
        except VerificationError:
            verified_keyid = None  # still shown, marked NOT VERIFIED
    name = request.args.get("name") or "report.json"
    try:
        page = render_report_html(document, verified_keyid=verified_keyid, report_name=name[:200])
    except ValueError as e:
        raise ApiProblem(422, "not_a_report", str(e)) from None
    return _secure(Response(page, mimetype="text/html"), REPORT_CSP)
