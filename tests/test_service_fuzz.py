"""schemathesis fuzzes the real service from its own /openapi.json: no request it generates may get a 5xx.

Bounded examples per operation keep it within a couple of minutes; ``LIPCERT_FUZZ_EXAMPLES`` raises the bound for a
longer run. Tenant ``bob`` is used.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from service_fixtures import TOKENS

schemathesis = pytest.importorskip("schemathesis")
EXAMPLES = int(os.environ.get("LIPCERT_FUZZ_EXAMPLES", "8"))


def test_no_generated_request_gets_a_server_error(service):
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
            if response.status_code >= 500:
                failures.append((case.method, case.formatted_path, response.status_code, response.text[:300]))

        run()
    print(f"{len(calls)} generated requests, statuses {sorted(set(calls))}")
    assert calls and not failures, failures
