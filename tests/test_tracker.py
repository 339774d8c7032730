"""certify.tracker: one place checks cancellation and the time budget at every progress point of a run."""

from __future__ import annotations

import time

import pytest

from certify.errors import ModelRejected
from certify.pipeline import run_pipeline
from certify.tracker import Cancelled, DeadlineExceeded, Steps, Tracker
from tests.conftest import EXAMPLE_MODEL


def test_reports_are_clamped_and_stages_timed():
    seen = []
    run = Tracker(lambda stage, fraction, message: seen.append((stage, fraction, message)))
    run.start("load", "reading")
    run.report("load", 1.7, "past the end")
    run.finish("load")
    run.finish("attacks", "skipped", "no dataset was given")
    assert seen == [("load", 0.0, "reading"), ("load", 1.0, "past the end"), ("load", 1.0, "done"),
                    ("attacks", 1.0, "no dataset was given")]
    assert [(s["stage"], s["status"], s["reason"]) for s in run.stages] == [
        ("load", "done", None), ("attacks", "skipped", "no dataset was given")]
    assert set(run.timings()) == {"load", "attacks"}


def test_cancellation_raises_at_the_next_point_and_names_the_stage():
    flag = {"stop": False}
    run = Tracker(cancelled=lambda: flag["stop"])
    run.report("bounds", 0.5)
    flag["stop"] = True
    with pytest.raises(Cancelled, match="during bounds"):
        run.report("bounds", 0.6)


def test_the_deadline_is_a_coded_refusal():
    run = Tracker(budget_s=0.05)
    time.sleep(0.1)
    with pytest.raises(DeadlineExceeded) as info:
        run.check("attacks")
    assert isinstance(info.value, ModelRejected) and info.value.code == "time_budget_exceeded"
    assert "time budget of 0.05 s during attacks" in info.value.message
    assert run.remaining() == 0.0


def test_a_span_reports_inside_its_range_of_the_stage_and_checks_the_run():
    seen, flag = [], {"stop": False}
    run = Tracker(lambda stage, fraction, message: seen.append((stage, round(fraction, 6))),
                  cancelled=lambda: flag["stop"])
    span = run.span("transfer", 0.5, 1.0)
    span.report("attacks", 0.5, "half of the second target")  # a sub-task naming its own stage counts in the span's
    steps = Steps(span, "attacks", jobs=2)
    steps.finish_job()
    steps.batch(1, 2)
    assert seen == [("transfer", 0.75), ("transfer", 0.875)]
    flag["stop"] = True
    with pytest.raises(Cancelled, match="during transfer"):
        steps.step()


def test_the_pipeline_stops_with_the_deadline_code_when_its_budget_is_spent():
    def slow(stage, fraction, message):
        time.sleep(0.6)

    with pytest.raises(DeadlineExceeded) as info:
        run_pipeline(EXAMPLE_MODEL, {"time_budget_s": 1, "attacks": "none"}, progress=slow)
    assert info.value.code == "time_budget_exceeded" and "time budget of 1 s" in info.value.message
