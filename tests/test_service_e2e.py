"""End to end over HTTP: upload, submit, poll, fetch and verify the signed report, then fetch it by model digest."""

from __future__ import annotations

import hashlib
import os
import time

from service_fixtures import EXAMPLES


def test_upload_is_content_addressed_and_idempotent(service):
    path = os.path.join(EXAMPLES, "digits_mlp.onnx")
    digest = "sha256:" + hashlib.sha256(open(path, "rb").read()).hexdigest()
    first = service.upload("models", path, who="bob")
    again = service.upload("models", path, who="bob")
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"] == digest
    record = first.json()
    assert record["inputs"][0]["name"] == "x" and record["operators"] == {"Gemm": 3, "Relu": 2}
    assert record["unsupported_operators"] == {} and record["supported"] is True


def test_multipart_upload(service):
    path = os.path.join(EXAMPLES, "digits_test.npz")
    with open(path, "rb") as f:
        r = service.session("bob").post(service.url("/v1/datasets"), files={"file": ("digits_test.npz", f)})
    assert r.status_code in (200, 201), r.text
    assert r.json()["samples"] == 450 and r.json()["x_shape"] == [450, 64] and r.json()["name"] == "digits_test.npz"


def test_job_runs_to_a_signed_report(service, digits_model, digits_dataset):
    from certify.report.dsse import open_envelope
    from certify.report.keys import load_public_key

    r = service.submit(digits_model, dataset=digits_dataset, epsilons=[0.05])
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["Location"].endswith(f"/v1/jobs/{job['id']}")
    assert job["state"] == "queued" and job["config"]["epsilons"] == [0.05]

    done = service.wait_job(job["id"])
    assert done["state"] == "succeeded", done
    assert done["progress"] == 1.0 and done["attempts"] == 1
    assert done["started_at"] and done["finished_at"] >= done["started_at"]
    assert [s["stage"] for s in done["stages"]][:3] == ["load", "convert", "conversion_check"]

    s = service.session()
    envelope = s.get(service.url(done["links"]["report"])).json()
    keys = s.get(service.url("/v1/keys")).json()["keys"]
    trusted = [load_public_key(k["public_pem"]) for k in keys]
    assert {k.keyid for k in trusted} == {k["keyid"] for k in keys}
    statement, keyid = open_envelope(envelope, trusted)
    assert keyid == keys[0]["keyid"]
    assert statement["subject"][0]["digest"]["sha256"] == digits_model.split(":")[1]
    assert statement["subject"][0]["name"] == "digits_mlp.onnx"

    latest = s.get(service.url("/v1/reports"), params={"model": digits_model})
    assert latest.status_code == 200 and latest.headers["X-Lipcert-Job"] == job["id"]
    assert latest.json() == envelope

    listed = s.get(service.url("/v1/jobs"), params={"state": "succeeded", "model": digits_model}).json()
    assert job["id"] in [j["id"] for j in listed["items"]]
    assert all(j["state"] == "succeeded" for j in listed["items"])


def test_idempotency_key_returns_the_same_job(service, tiny_model):
    s = service.session()
    body = {"model": tiny_model, "samples": 2, "attacks": "none"}
    first = s.post(service.url("/v1/jobs"), json=body, headers={"Idempotency-Key": "retry-me-1"})
    second = s.post(service.url("/v1/jobs"), json=body, headers={"Idempotency-Key": "retry-me-1"})
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers.get("Idempotent-Replayed") == "true"
    service.wait_job(first.json()["id"])


def test_pagination(service, tiny_model):
    s = service.session()
    page = s.get(service.url("/v1/jobs"), params={"limit": 1}).json()
    assert len(page["items"]) == 1 and page["next"]
    second = s.get(service.url(page["next"])).json()
    assert second["items"] and second["items"][0]["id"] != page["items"][0]["id"]


def test_health_metrics_openapi(service):
    import requests

    assert requests.get(service.url("/healthz")).json() == {"status": "ok"}
    ready = requests.get(service.url("/readyz")).json()
    assert ready["status"] == "ready" and ready["workers"] >= 1
    metrics = requests.get(service.url("/metrics")).text
    assert 'lipcert_jobs{state="queued"}' in metrics and "lipcert_queue_depth" in metrics
    assert 'lipcert_upload_bytes_total{kind="models"}' in metrics
    assert 'lipcert_stage_seconds_count{stage="load"}' in metrics  # jobs ran before this test
    spec = requests.get(service.url("/openapi.json")).json()
    job_create = spec["components"]["schemas"]["JobCreate"]["properties"]
    assert {"model", "dataset", "epsilons", "norms", "attacks", "input_range", "samples", "seed", "policy",
            "transfer_to", "webhook_url"} <= set(job_create)
    assert "/v1/jobs/{job_id}/report" in spec["paths"]


def test_webhook_is_called_when_the_job_ends(service, tiny_model):
    import http.server
    import json
    import threading

    received = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        job_id = service.submit(tiny_model, webhook_url=url).json()["id"]
        assert service.wait_job(job_id)["state"] == "succeeded"
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received == [{"id": job_id, "state": "succeeded", "model": tiny_model, "error": None}]
    finally:
        server.shutdown()


def test_filtered_listings_follow_a_job_through_its_states(service, tiny_model):
    """Over HTTP: a cancelled job and a finished one each appear under their current state (and model) only."""
    s = service.session("slow")
    runs, stops = (s.post(service.url("/v1/jobs"), json={"model": tiny_model, "samples": 2, "attacks": "none"})
                   .json()["id"] for _ in range(2))
    assert s.delete(service.url(f"/v1/jobs/{stops}")).status_code == 202

    def listed(state):
        r = s.get(service.url("/v1/jobs"), params={"state": state, "model": tiny_model, "limit": 500})
        return {j["id"] for j in r.json()["items"]}

    assert stops in listed("cancelled") and stops not in listed("queued") | listed("running")
    assert service.wait_job(runs, who="slow", timeout=120)["state"] == "succeeded"
    assert runs in listed("succeeded") and runs not in listed("queued") | listed("running") | listed("cancelled")
