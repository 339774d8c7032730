"""Bad input over HTTP: each answer has its status code and an RFC 9457 problem+json body."""

from __future__ import annotations

import io
import socket
from urllib.parse import urlparse

import numpy as np
import onnx
import pytest
import requests
from onnx import TensorProto, helper


def problem(r: requests.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["title"] and body["type"].startswith("https://")
    if code:
        assert body["code"] == code, body
    return body


def _model_bytes(op: str, out_shape, **attrs) -> bytes:
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.fixture(scope="module")
def alice_job(service, tiny_model):
    r = service.submit(tiny_model)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_no_token(service):
    body = problem(requests.get(service.url("/v1/jobs")), 401, "missing_token")
    assert "Bearer" in body["detail"]


def test_wrong_token(service):
    r = requests.get(service.url("/v1/jobs"), headers={"Authorization": "Bearer not-a-real-token-at-all"})
    problem(r, 401, "invalid_token")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_other_tenants_job_is_not_found(service, alice_job, digits_model):
    bob = service.session("bob")
    problem(bob.get(service.url(f"/v1/jobs/{alice_job}")), 404, "not_found")
    problem(bob.get(service.url(f"/v1/jobs/{alice_job}/report")), 404, "not_found")
    problem(bob.delete(service.url(f"/v1/jobs/{alice_job}")), 404, "not_found")
    assert alice_job not in [j["id"] for j in bob.get(service.url("/v1/jobs")).json()["items"]]
    problem(bob.get(service.url("/v1/reports"), params={"model": digits_model}), 404)


def test_read_only_token_cannot_write(service, alice_job, digits_model):
    ro = service.session("alice_ro")
    assert ro.get(service.url(f"/v1/jobs/{alice_job}")).status_code == 200
    problem(ro.post(service.url("/v1/jobs"), json={"model": digits_model}), 403, "read_only_token")
    problem(service.upload("models", b"\x00" * 10, who="alice_ro"), 403, "read_only_token")


def test_non_onnx_upload(service):
    body = problem(service.upload("models", b"this is not an onnx model at all"), 422)
    assert body["code"] in ("not_onnx", "no_graph")


def test_oversized_upload_is_refused_before_reading(service):
    """Declare 64 MiB, send only the headers: the answer is 413 right away (the body was never read)."""
    u = urlparse(service.base_url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
        sock.sendall((f"POST /v1/models HTTP/1.1\r\nHost: {u.hostname}\r\nAuthorization: Bearer "
                      f"{service.session().headers['Authorization'].split()[1]}\r\n"
                      "Content-Type: application/octet-stream\r\nContent-Length: 67108864\r\n\r\n").encode())
        sock.sendall(b"\x00" * 1024)
        head = b""
        while b"payload_too_large" not in head and (chunk := sock.recv(65536)):
            head += chunk
        head = head.decode(errors="replace")
    assert head.startswith("HTTP/1.1 413"), head[:200]
    assert "application/problem+json" in head and "payload_too_large" in head


def test_chunked_oversized_upload(service):
    def chunks():
        for _ in range(40):
            yield b"\x00" * 65536  # 2.5 MiB, over the 1 MiB cap of the test service

    r = service.session().post(service.url("/v1/models"), data=chunks(),
                               headers={"Content-Type": "application/octet-stream"})
    problem(r, 413, "payload_too_large")


def test_unsupported_operator(service):
    up = service.upload("models", _model_bytes("Unique", [None], sorted=1), name="unique.onnx")
    assert up.status_code in (200, 201), up.text
    assert up.json()["unsupported_operators"] == {"Unique": 1} and up.json()["supported"] is False
    body = problem(service.submit(up.json()["id"]), 422, "unsupported_operator")
    assert "Unique" in body["detail"]


def test_custom_domain_operator(service):
    node = helper.make_node("Magic", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)])
    problem(service.upload("models", model.SerializeToString()), 422, "custom_domain")


def test_malformed_json(service):
    r = service.session().post(service.url("/v1/jobs"), data=b'{"model": "sha256:', headers={
        "Content-Type": "application/json"})
    problem(r, 400, "malformed_json")


def test_wrong_media_type(service, digits_model):
    r = service.session().post(service.url("/v1/jobs"), data=f"model={digits_model}",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    problem(r, 415, "unsupported_media_type")


def test_unknown_fields(service, digits_model):
    body = problem(service.submit(digits_model, bogus=1, epsilon=0.1), 400, "validation_error")
    assert set(body["errors"]) == {"bogus", "epsilon"}


def test_field_errors(service, digits_model):
    body = problem(service.submit(digits_model, epsilons=[-0.5, 2000], norms=["l7"], samples=0), 400,
                   "validation_error")
    assert set(body["errors"]) == {"epsilons", "norms", "samples"}
    problem(service.submit("sha256:abc"), 400, "validation_error")
    body = problem(service.submit(digits_model, input_range=[1, 0]), 400)
    assert "input_range" in body["errors"]
    body = problem(service.submit(digits_model, certifiers=["crown", "magic"]), 400, "validation_error")
    assert "unknown certifier 'magic'" in str(body["errors"]["certifiers"])


def test_unknown_model(service):
    problem(service.submit("sha256:" + "ab" * 32), 422, "unknown_model")


def test_pickled_dataset(service):
    data = _npz(x=np.array([{"a": 1}, {"b": 2}], dtype=object), y=np.array([0, 1]))
    problem(service.upload("datasets", data), 422, "dataset_pickled")


def test_dataset_without_labels(service):
    problem(service.upload("datasets", _npz(x=np.zeros((3, 64), np.float32))), 422, "dataset_missing_arrays")
    problem(service.upload("datasets", b"PK not really a zip"), 422, "not_npz")


def test_dataset_shape_must_match_the_model(service, digits_model):
    up = service.upload("datasets", _npz(x=np.zeros((5, 3, 8, 8), np.float32), y=np.zeros(5, np.int64)))
    assert up.status_code in (200, 201), up.text
    body = problem(service.submit(digits_model, dataset=up.json()["id"]), 422, "dataset_model_mismatch")
    assert "[3, 8, 8]" in body["detail"]


def test_report_before_success_is_409(service, tiny_model):
    job = service.submit(tiny_model, who="slow").json()
    s = service.session("slow")
    problem(s.get(service.url(f"/v1/jobs/{job['id']}/report")), 409, "report_not_ready")
    assert s.delete(service.url(f"/v1/jobs/{job['id']}")).status_code == 202
    done = service.wait_job(job["id"], who="slow")
    assert done["state"] == "cancelled"
    problem(s.delete(service.url(f"/v1/jobs/{job['id']}")), 409, "job_finished")


def test_not_found_and_method_not_allowed_are_problems(service):
    s = service.session()
    problem(s.get(service.url("/v1/jobs/job_doesnotexist")), 404, "not_found")
    problem(s.get(service.url("/v1/nothing-here")), 404)
    r = s.put(service.url("/v1/jobs"))
    problem(r, 405)
    assert set(r.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


def test_oversized_job_request(service, tiny_model):
    r = service.submit(tiny_model, policy={"note": "x" * 300_000})
    problem(r, 413, "payload_too_large")


def test_unique_model_is_valid_onnx():
    """The unsupported-operator fixture is itself a valid model (so the refusal is about support, not syntax)."""
    onnx.checker.check_model(onnx.load_from_string(_model_bytes("Unique", [None], sorted=1)))


def test_rate_limit_counts_per_tenant_per_second(service):
    """The limiter the API applies, against the service's real Redis."""
    import time

    from service.core.records import Records, connect

    records = Records(connect(service.env["REDIS_URL"]))
    while time.time() % 1 > 0.5:  # stay inside one one-second window
        time.sleep(0.05)
    allowed = [records.allow_request("ratetest", 3) for _ in range(5)]
    assert allowed == [True, True, True, False, False]
    assert records.allow_request("other-tenant", 3)


def test_job_quota(service, tiny_model):
    from service_fixtures import JOB_QUOTA, tiny_model_bytes

    assert service.upload("models", tiny_model_bytes(), who="bob").json()["id"] == tiny_model
    bob = service.session("bob")
    created, refused = [], None
    for _ in range(3 * JOB_QUOTA):
        r = service.submit(tiny_model, who="bob")
        if r.status_code != 202:
            refused = r
            break
        created.append(r.json()["id"])
    try:
        assert refused is not None and len(created) >= JOB_QUOTA
        problem(refused, 429, "job_quota_exceeded")
        assert refused.headers["Retry-After"]
    finally:
        for job_id in created:
            bob.delete(service.url(f"/v1/jobs/{job_id}"))


def test_concurrent_job_requests_never_exceed_the_quota(service, tiny_model):
    """Many simultaneous POSTs for one tenant (whose jobs run slowly, so they stay active): the tenant's queued and
    running jobs, sampled in Redis throughout, never exceed the quota; the requests over it get 429."""
    import threading

    from service_fixtures import JOB_QUOTA

    from service.core.records import Records, connect

    records = Records(connect(service.env["REDIS_URL"]))
    slow, highest, done = service.session("slow"), [0], threading.Event()

    def sample():
        while not done.is_set():
            highest[0] = max(highest[0], records.active_jobs("slow"))

    barrier, answers = threading.Barrier(3 * JOB_QUOTA), []

    def post():
        session = service.session("slow")
        barrier.wait()
        answers.append(session.post(service.url("/v1/jobs"), json={"model": tiny_model, "samples": 4,
                                                                   "attacks": "none"}, timeout=30))

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=post) for _ in range(3 * JOB_QUOTA)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    sampler.join()
    created = [r.json()["id"] for r in answers if r.status_code == 202]
    try:
        assert highest[0] <= JOB_QUOTA and 1 <= len(created) <= JOB_QUOTA, (highest[0], len(created))
        assert {r.status_code for r in answers} == {202, 429}
    finally:
        for job_id in created:
            slow.delete(service.url(f"/v1/jobs/{job_id}"))


def test_webhook_to_an_internal_address_is_refused(service, tiny_model):
    r = service.submit(tiny_model, webhook_url="http://169.254.169.254/latest/meta-data")
    body = problem(r, 422, "webhook_refused")
    assert "webhook_url" in body["errors"] and "169.254.169.254" in body["detail"]
