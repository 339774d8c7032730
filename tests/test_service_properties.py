"""VNN-LIB properties through the service: refused at job creation when they do not parse, decided by the worker
and recorded in the signed report when they do."""

from __future__ import annotations

import numpy as np
from test_properties import DATA, robustness_property


def test_a_job_decides_its_properties_and_the_report_records_them(service, digits_model):
    data = np.load(DATA)
    text = robustness_property(data["x"][0].astype(np.float64), int(data["y"][0]), 0.001)
    bad = service.submit(digits_model, properties=[{"name": "p", "vnnlib": "(assert (<= Y_0"}])
    assert bad.status_code == 400 and "properties" in bad.json()["errors"], bad.text
    r = service.submit(digits_model, properties=[{"name": "near", "vnnlib": text}], property_timeout_s=20)
    assert r.status_code == 202, r.text
    done = service.wait_job(r.json()["id"])
    assert done["state"] == "succeeded", done
    assert "properties" in [s["stage"] for s in done["stages"]]
    from certify.report.dsse import peek_statement

    envelope = service.session().get(service.url(done["links"]["report"])).json()
    (result,) = peek_statement(envelope)["predicate"]["properties"]["results"]
    assert (result["name"], result["result"]) == ("near", "holds")
