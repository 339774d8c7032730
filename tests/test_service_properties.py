"""VNN-LIB properties through the service: refused at job creation when they do not parse, decided by the worker
and recorded in the signed report when they do."""

from __future__ import annotations

import hashlib

import numpy as np
from test_properties import DATA, robustness_property


def test_a_job_decides_its_properties_and_the_report_records_them(service, digits_model):
    """Inline text is stored as a property upload at job creation: the job names it by id and size, so every GET
    of the job stays small however large the text (here 200 KiB with its comments)."""
    data = np.load(DATA)
    text = robustness_property(data["x"][0].astype(np.float64), int(data["y"][0]), 0.001)
    text += "; a comment line of padding\n" * (200 * 1024 // 28)
    bad = service.submit(digits_model, properties=[{"name": "p", "vnnlib": "(assert (<= Y_0"}])
    assert bad.status_code == 400 and "properties" in bad.json()["errors"], bad.text
    r = service.submit(digits_model, properties=[{"name": "near", "vnnlib": text}], property_timeout_s=20)
    assert r.status_code == 202, r.text
    digest = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    stored = {"name": "near", "property_id": digest, "size": len(text.encode())}
    assert r.json()["config"]["properties"] == [stored]
    polled = service.session().get(service.url(f"/v1/jobs/{r.json()['id']}"))
    assert len(polled.content) < 4096 and polled.json()["config"]["properties"] == [stored]
    listed = service.session().get(service.url(f"/v1/properties/{digest}")).json()
    assert (listed["name"], listed["size"], listed["inputs"], listed["outputs"], listed["cases"]) == (
        "near", len(text.encode()), data["x"][0].size, 10, 1)
    done = service.wait_job(r.json()["id"])
    assert done["state"] == "succeeded", done
    assert "properties" in [s["stage"] for s in done["stages"]]
    from certify.report.dsse import peek_statement

    envelope = service.session().get(service.url(done["links"]["report"])).json()
    (result,) = peek_statement(envelope)["predicate"]["properties"]["results"]
    assert (result["name"], result["result"]) == ("near", "holds")
    assert "sha256:" + result["sha256"] == digest  # the very text sent inline was decided


def test_an_uploaded_property_is_checked_listed_named_by_jobs_and_deleted(service, digits_model, tiny_model):
    data = np.load(DATA)
    text = robustness_property(data["x"][1].astype(np.float64), int(data["y"][1]), 0.001)
    alice, bob = service.session(), service.session("bob")

    bad = service.upload("properties", b"(declare-const X_0 Real)\n(assert (<= X_0")
    assert bad.status_code == 422 and bad.headers["Content-Type"] == "application/problem+json", bad.text
    assert bad.json()["code"] == "invalid_vnnlib" and "file" in bad.json()["errors"]
    assert service.upload("properties", b"(" * (1024 * 1024 + 1)).json()["code"] == "payload_too_large"

    up = service.upload("properties", text.encode(), name="near.vnnlib")
    assert up.status_code == 201, up.text
    prop = up.json()
    assert (prop["inputs"], prop["outputs"], prop["cases"]) == (data["x"][1].size, 10, 1)
    assert service.upload("properties", text.encode()).status_code == 200
    assert bob.get(service.url(f"/v1/properties/{prop['id']}")).status_code == 404  # tenant-scoped
    assert prop["id"] in [p["id"] for p in alice.get(service.url("/v1/properties")).json()["items"]]
    assert prop["id"] not in [p["id"] for p in bob.get(service.url("/v1/properties")).json()["items"]]
    other = service.upload("properties", text.encode() + b"; a second file\n").json()
    first = alice.get(service.url("/v1/properties"), params={"limit": 1}).json()
    second = alice.get(service.url(first["next"])).json()
    assert [p["id"] for p in first["items"] + second["items"]][:2] == [other["id"], prop["id"]]  # newest first

    both = service.submit(digits_model, properties=[{"name": "p", "vnnlib": text, "property_id": prop["id"]}])
    assert both.status_code == 400 and "properties" in both.json()["errors"], both.text
    unknown = service.submit(digits_model, properties=[{"name": "p", "property_id": "sha256:" + "0" * 64}])
    assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_property", unknown.text
    assert "properties[0].property_id" in unknown.json()["errors"]
    for entry in ({"name": "p", "property_id": prop["id"]}, {"name": "p", "vnnlib": text}):
        misfit = service.submit(tiny_model, properties=[entry])  # 4 inputs, 3 outputs: refused before it runs
        assert misfit.status_code == 422 and misfit.json()["code"] == "property_mismatch", misfit.text
        assert "properties[0]" in misfit.json()["errors"]

    r = service.submit(digits_model, properties=[{"name": "uploaded", "property_id": prop["id"]}],
                       property_timeout_s=20)
    assert r.status_code == 202, r.text
    assert r.json()["config"]["properties"] == [{"name": "uploaded", "property_id": prop["id"]}]
    assert bob.delete(service.url(f"/v1/properties/{prop['id']}")).status_code == 404
    assert alice.delete(service.url(f"/v1/properties/{prop['id']}")).status_code == 204  # the queued job keeps it
    done = service.wait_job(r.json()["id"])
    assert done["state"] == "succeeded", done
    from certify.report.dsse import peek_statement

    envelope = alice.get(service.url(done["links"]["report"])).json()
    (result,) = peek_statement(envelope)["predicate"]["properties"]["results"]
    assert (result["name"], result["result"]) == ("uploaded", "holds")
    assert "sha256:" + result["sha256"] == prop["id"]  # the report names the very bytes uploaded

    assert alice.get(service.url(f"/v1/properties/{prop['id']}")).status_code == 404
    assert prop["id"] not in [p["id"] for p in alice.get(service.url("/v1/properties")).json()["items"]]
    gone = service.submit(digits_model, properties=[{"name": "p", "property_id": prop["id"]}])
    assert gone.status_code == 422 and gone.json()["code"] == "unknown_property"
