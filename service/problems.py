"""RFC 9457 problem details: every error the API returns is ``application/problem+json``, never HTML."""

from __future__ import annotations

import json
import logging

from flask import Response, request
from werkzeug.exceptions import HTTPException

PROBLEM_TYPE = "https://lipcert.dev/problems/"
log = logging.getLogger("lipcert.api")


class ApiProblem(Exception):
    """Raised anywhere in a request to answer with a problem document."""

    def __init__(self, status: int, code: str, detail: str, errors: dict | None = None, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.errors, self.headers = status, code, detail, errors, headers or {}


_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type", 422: "Unprocessable Content",
           429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


def problem_response(status: int, code: str, detail: str, errors: dict | None = None,
                     headers: dict | None = None) -> Response:
    body = {
        "type": PROBLEM_TYPE + code,
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
        "instance": request.path if request else None,
    }
    if errors:
        body["errors"] = errors
    response = Response(json.dumps(body), status=status, mimetype="application/problem+json")
    for k, v in (headers or {}).items():
        response.headers[k] = v
    return response


def _flatten(messages) -> dict:
    """webargs messages {location: {field: [msg]}} -> {field: [msg]} (the location is implied by the endpoint)."""
    if isinstance(messages, dict) and set(messages) <= {"json", "query", "form", "headers", "files", "view_args"}:
        out = {}
        for per_location in messages.values():
            if isinstance(per_location, dict):
                out.update(per_location)
            else:
                out["_schema"] = per_location
        return out
    return messages if isinstance(messages, dict) else {"_schema": messages}


def from_http_exception(e: HTTPException) -> Response:
    data = getattr(e, "data", None) or {}
    if "messages" in data:  # a webargs/marshmallow validation error
        errors = _flatten(data["messages"])
        if errors == {"_schema": ["Invalid JSON body."]} or "Invalid JSON body." in str(errors):
            return problem_response(400, "malformed_json", "the request body is not valid JSON")
        return problem_response(400, "validation_error", "the request has invalid fields", errors=errors)
    status = e.code or 500
    codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}
    headers = {k: v for k, v in e.get_headers() if k.lower() != "content-type"}  # e.g. Allow on a 405
    return problem_response(status, codes.get(status, f"http_{status}"), e.description or _TITLES.get(status, ""),
                            headers=headers)


def register(app) -> None:
    import redis
    from marshmallow import ValidationError

    from certify.errors import ModelRejected

    @app.errorhandler(ApiProblem)
    def _problem(e: ApiProblem):
        return problem_response(e.status, e.code, e.detail, e.errors, e.headers)

    @app.errorhandler(ModelRejected)
    def _rejected(e: ModelRejected):
        return problem_response(422, e.code, e.message)

    @app.errorhandler(ValidationError)
    def _invalid(e: ValidationError):
        return problem_response(400, "validation_error", "the request has invalid fields",
                                errors=_flatten(e.normalized_messages()))

    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    def _redis_down(e):
        log.warning("redis unavailable: %s", e)
        return problem_response(503, "store_unavailable", "the job store is unavailable; retry shortly",
                                headers={"Retry-After": "1"})

    @app.errorhandler(RecursionError)
    def _too_deep(e: RecursionError):  # json.loads on a deeply nested body
        return problem_response(400, "malformed_json", "the request body is nested too deeply")

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException):
        return from_http_exception(e)

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(500, "internal_error", "an internal error occurred")
