"""The ETA estimate and the progress display: monotone near the end, bars on a terminal only."""

import io
import json

from click.testing import CliRunner

from certify.cli import main
from certify.progress import STAGE_WEIGHTS, Eta, StageProgress, overall_fraction

EXAMPLE_MODEL = "examples/digits_mlp.onnx"


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _etas(steps):
    """Feed (seconds spent, fraction reached) steps to an Eta; return the ETAs it gave."""
    clock = FakeClock()
    eta = Eta(clock=clock)
    out = []
    for dt, fraction in steps:
        clock.t += dt
        out.append((fraction, eta.update(fraction)))
    return out


def test_eta_never_rises_past_half_even_when_the_work_slows_down():
    # a quick start, then each step 20x slower: the naive estimate climbs from 1.2 s to several seconds
    steps = [(0.1, f / 20) for f in range(1, 11)] + [(2.0, f / 20) for f in range(11, 20)]
    etas = _etas(steps)
    late = [e for f, e in etas if f >= 0.5]
    assert all(b <= a for a, b in zip(late, late[1:])), late
    assert all(e >= 0 for _, e in etas if e is not None)


def test_eta_is_smoothed_early_and_zero_at_the_end():
    etas = _etas([(1.0, 0.1), (1.0, 0.2), (10.0, 0.3), (1.0, 1.0)])
    naive_third = 12.0 * 0.7 / 0.3
    assert etas[0][1] == 9.0  # the first estimate is the plain one
    assert etas[2][1] < naive_third  # a sudden slow step moves the estimate only part of the way
    assert etas[-1][1] == 0.0


def test_eta_ignores_a_fraction_going_backwards():
    etas = _etas([(1.0, 0.5), (1.0, 0.4)])
    assert etas[1][1] <= etas[0][1]


def test_overall_fraction_weighs_stages_and_stays_monotone():
    stages = tuple(STAGE_WEIGHTS)
    values = [overall_fraction(stages, i, f) for i in range(len(stages)) for f in (0.0, 0.5, 1.0)]
    assert values == sorted(values) and values[-1] == 1.0
    assert overall_fraction(stages, stages.index("attacks"), 0.0) < 0.5  # the attacks are most of a job


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bars_on_a_terminal_show_percent_and_eta_and_stop_where_the_work_stopped():
    stream = Terminal()
    progress = StageProgress(stream)
    progress("load", 0.0, "parsing")
    progress("load", 1.0, "done")
    progress("attacks", 0.3, "pgd eps=0.1")
    progress("attacks", 0.62, "pgd eps=0.1")
    progress.close()  # the job failed here
    text = stream.getvalue()
    assert "100%" in text and "62%" in text and "eta" in text and "pgd eps=0.1" in text
    assert text.rstrip().splitlines()[-1].count("100%") == 0


def test_no_bars_off_a_terminal_and_nothing_when_quiet():
    lines = io.StringIO()
    progress = StageProgress(lines)
    progress("load", 0.0, "parsing")
    progress("load", 1.0, "done")
    progress("certified", 1.0, "skipped")
    assert lines.getvalue() == "[load] parsing\n[load] done\n[certified] skipped\n"
    quiet = Terminal()
    progress = StageProgress(quiet, quiet=True)
    progress("load", 0.5, "parsing")
    progress.close()
    assert quiet.getvalue() == ""


def test_bounds_json_lines_prints_each_layer_then_the_result():
    result = CliRunner().invoke(main, ["bounds", EXAMPLE_MODEL, "--json-lines", "--quiet"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["type"] for r in records] == ["layer"] * 5 + ["result"]
    assert [r["node"] for r in records[:-1]] == [row["node"] for row in records[-1]["layers"]]
    assert records[-1]["network"]["upper"] > 0
