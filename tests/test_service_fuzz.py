"""schemathesis fuzzes the real service from its own /openapi.json: no request it generates may get a 5xx, and every
response must be one the document declares (status code, content type, and a body matching the declared schema).

Bounded examples per operation keep it within a couple of minutes; ``LIPCERT_FUZZ_EXAMPLES`` raises the bound for a
longer run. Tenant ``bob`` is used.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from service_fixtures import TOKENS

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup  # noqa: E402 - only once schemathesis is known to be there

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = int(os.environ.get("LIPCERT_FUZZ_EXAMPLES", "8"))


def test_no_generated_request_gets_a_server_error_or_an_undocumented_response(service):
    schema = schemathesis.openapi.from_url(service.url("/openapi.json"))
    headers = {"Authorization": f"Bearer {TOKENS['bob']}"}
    failures, calls = [], []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def run(case):
            response = case.call(headers=headers, timeout=30)
            calls.append(response.status_code)
            try:
                case.validate_response(response, checks=CHECKS)
            except FailureGroup as e:  # every failure of the response, collected
                failures.append((case.method, case.formatted_path, response.status_code, str(e)[:600]))

        run()
    print(f"{len(calls)} generated requests, statuses {sorted(set(calls))}")
    for failure in failures:
        print(*failure[:3], failure[3].splitlines()[2:5])
    assert calls and not failures, failures
