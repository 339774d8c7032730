"""The self-contained HTML report page: content, charts, escaping, skipped sections and the drawing helpers."""

from __future__ import annotations

import copy
import math
import shlex
import struct
import zlib
from html.parser import HTMLParser

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from report_example import example_predicate

from certify.report.dsse import sign_statement
from certify.report.html import (
    image_layout,
    lower_steps,
    nice_ticks,
    png_bytes,
    render_report_html,
    to_hwc,
    upper_steps,
)
from certify.report.keys import Signer, generate_private_key
from certify.report.statement import build_statement

MODEL_SHA = "ab" * 32


class Page(HTMLParser):
    """Every element with its attributes and the text inside each element (by the innermost open tag)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.texts: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.texts.append(data)

    def find(self, tag: str, **attrs) -> list[dict]:
        return [a for t, a in self.elements if t == tag and all(a.get(k) == v for k, v in attrs.items())]

    @property
    def text(self) -> str:
        return " ".join(self.texts)


@pytest.fixture(scope="module")
def signer():
    return Signer(generate_private_key())


def image_examples(n: int = 2, shape=(1, 6, 6)) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        x = rng.random(shape)
        adv = np.clip(x + rng.normal(0, 0.1, shape), 0, 1)
        out.append({"index": i, "label": 7, "clean_prediction": 7, "adversarial_prediction": 1, "attack": "pgd",
                    "eps": 0.5, "distance": float(np.linalg.norm(adv - x)), "shape": list(shape),
                    "original": x.tolist(), "perturbed": adv.tolist(), "difference": (adv - x).tolist()})
    return out


def envelope_for(predicate: dict, signer, name: str = "digits.onnx") -> dict:
    return sign_statement(build_statement(model_name=name, model_sha256=MODEL_SHA, predicate=predicate), signer)


def test_full_report_has_every_section_and_chart(signer):
    p = example_predicate()
    p["attacks"]["examples"] = {"l2": image_examples(3)}
    p["attacks"]["minimal_perturbation"]["l2"]["distances"] = [0.2, 0.5, 0.9, 1.1, 1.3, 1.4, 2.0, 3.9]
    page = Page(render_report_html(envelope_for(p, signer), verified_keyid=signer.keyid))
    ids = [a["id"] for a in page.find("section") if "id" in a]
    assert ids == ["summary", "model", "bounds", "accuracy", "perturbations", "examples", "policy", "verify",
                   "details"]
    # One upper bar per layer and one for the whole network; lower bars where a lower bound is given.
    layers = p["bounds"]["layers"]
    assert len(page.find("rect", **{"class": "bar-upper"})) == len(layers) + 1
    assert len(page.find("rect", **{"class": "bar-lower"})) == len(layers) + 1
    # Bar lengths follow the log scale: conv2 (4.55) is longer than conv1 (3.12), which is longer than relu (1).
    widths = [float(a["width"]) for a in page.find("rect", **{"class": "bar-upper"})]
    assert widths[4] > widths[0] > widths[2] > 0
    # One sandwich per norm (l2 has both curves, linf only the attacked one), each with its shaded band.
    assert len(page.find("polygon", **{"class": "band"})) == 2
    assert len(page.find("circle", **{"class": "point-certified"})) == 3
    assert len(page.find("circle", **{"class": "point-attacked"})) == 4
    assert sum(int(a.get("height", "0") != "0.0") for a in page.find("rect", **{"class": "bin"})) >= 3
    imgs = [a for a in page.find("img") if a["src"].startswith("data:image/png;base64,")]
    assert len(imgs) == 9  # original, perturbed, difference per example
    assert "VERIFIED: signed by trusted key " + signer.keyid in page.text
    assert "NO POLICY" in page.text


def test_page_is_self_contained_and_has_no_script(signer):
    text = render_report_html(envelope_for(example_predicate(), signer))
    page = Page(text)
    assert not page.find("script") and not page.find("link") and not page.find("iframe")
    for _, attrs in page.elements:
        assert not any(k.startswith("on") for k in attrs)
        for key in ("src", "href"):
            assert not attrs.get(key) or attrs[key].startswith(("data:", "#")), attrs
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "default-src 'none'" in text


def test_user_controlled_strings_are_escaped(signer):
    evil = '<script>alert(1)</script>"onload="x'
    p = example_predicate()
    p["bounds"]["layers"][0]["node"] = evil
    p["bounds"]["layers"][0]["method"] = evil
    p["model"]["inputs"][0]["name"] = evil
    p["attacks"]["warnings"] = [evil]
    p["policy"] = {"verdict": "fail", "checks": [{"name": evil, "threshold": 0.5, "value": 0.4, "verdict": "fail",
                                                  "detail": evil}]}
    text = render_report_html(envelope_for(p, signer, name=evil + ".onnx"))
    page = Page(text)
    assert "<script" not in text
    assert not page.find("script")
    assert all(not any(k.startswith("on") for k in attrs) for _, attrs in page.elements)
    assert page.text.count("<script>alert(1)</script>") >= 5  # shown as text, in tables, titles and the SVG
    assert f"--model {shlex.quote(evil + '.onnx')}" in page.text
    assert page.find("span", **{"class": "verdict fail"}) and len(page.find("td", **{"class": "tag-fail"})) == 1
    assert len(page.find("td", **{"class": "tag-pass"})) == 3  # the attack sanity checks


def test_skipped_stages_are_shown_with_their_reason(signer):
    page = Page(render_report_html(envelope_for(example_predicate(skipped_stages=True), signer)))
    assert page.text.count("no dataset was given") >= 4  # accuracy (2), perturbations, examples
    assert not page.find("polygon", **{"class": "band"})
    assert len(page.find("rect", **{"class": "bar-upper"})) == 9  # the bounds did run


def test_all_stages_skipped_still_renders(signer):
    p = example_predicate(skipped_stages=True)
    for key in ("conversion", "converter", "bounds"):
        p[key] = {"status": "skipped", "reason": f"{key} did not run"}
    page = Page(render_report_html(envelope_for(p, signer)))
    assert "Skipped: bounds did run" not in page.text and "Skipped: bounds did not run" in page.text
    assert "skipped: conversion did not run" in page.text
    assert not page.find("svg")


def test_summary_statistics_only_draw_a_box_plot(signer):
    page = Page(render_report_html(envelope_for(example_predicate(), signer)))
    (whisker,) = page.find("line", **{"class": "range"})
    assert float(whisker["x2"]) - float(whisker["x1"]) > 100
    assert not page.find("rect", **{"class": "quartiles"})  # no percentiles in this report
    assert "summary statistics only" in page.text
    assert "the report carries no adversarial examples" in page.text

    p = example_predicate()
    p["attacks"]["minimal_perturbation"]["l2"]["percentiles"] = {"5": 0.3, "25": 1.0, "75": 2.0, "95": 3.5}
    page = Page(render_report_html(envelope_for(p, signer)))
    (box,) = page.find("rect", **{"class": "quartiles"})
    (whisker,) = page.find("line", **{"class": "range"})
    x1, x2 = float(whisker["x1"]), float(whisker["x2"])
    # min 0.21 .. max 3.9 on a linear axis: the box spans (1.0 - 0.21) / 3.69 .. (2.0 - 0.21) / 3.69 of the whisker.
    assert float(box["x"]) == pytest.approx(x1 + (x2 - x1) * 0.79 / 3.69, abs=0.2)
    assert float(box["width"]) == pytest.approx((x2 - x1) * 1.0 / 3.69, abs=0.2)


def test_histogram_from_given_bins(signer):
    p = example_predicate()
    p["attacks"]["minimal_perturbation"]["l2"]["histogram"] = {"edges": [0, 1, 2, 3], "counts": [5, 0, 2]}
    page = Page(render_report_html(envelope_for(p, signer)))
    heights = [float(a["height"]) for a in page.find("rect", **{"class": "bin"})]
    assert len(heights) == 3 and heights[0] > heights[2] > heights[1] == 0


def test_non_image_examples_are_listed(signer):
    p = example_predicate()
    p["attacks"]["examples"] = image_examples(2, shape=(5,))
    page = Page(render_report_html(envelope_for(p, signer)))
    assert "The inputs are not images" in page.text and not page.find("img")


def test_flat_square_inputs_are_drawn_as_images(signer):
    p = example_predicate()
    p["attacks"]["examples"] = image_examples(1, shape=(64,))
    page = Page(render_report_html(envelope_for(p, signer)))
    assert len(page.find("img")) == 3


def test_verification_state_and_command(signer):
    env = envelope_for(example_predicate(), signer, name="my model.onnx")
    unverified = Page(render_report_html(env, report_name="out/r.json"))
    assert "NOT VERIFIED: this page does not check the signature" in unverified.text
    assert signer.keyid in unverified.text  # named by the envelope, not claimed as verified
    assert "(verified)" not in unverified.text
    (command,) = [t for t in unverified.texts if t.startswith("lipcert verify")]
    assert command == "lipcert verify out/r.json --key lipcert.pub.pem --model 'my model.onnx'"
    from certify.cli import main

    ctx = main.make_context("lipcert", shlex.split(command)[1:])
    name, cmd, rest = main.resolve_command(ctx, ctx.protected_args + ctx.args)
    parsed = cmd.make_context(name, [a for a in rest if a != "--model" and a != "my model.onnx"], parent=ctx)
    assert parsed.params["keys"] == ("lipcert.pub.pem",) and parsed.params["report"] == "out/r.json"
    assert "--model" in [o for p in cmd.params for o in p.opts]

    statement = build_statement(model_name="m.onnx", model_sha256=MODEL_SHA, predicate=example_predicate())
    bare = Page(render_report_html(statement))
    assert "NOT VERIFIED: an unsigned statement" in bare.text and "no signature to verify" in bare.text


def test_a_malformed_section_is_reported_not_raised(signer):
    statement = build_statement(model_name="m.onnx", model_sha256=MODEL_SHA, predicate=example_predicate())
    broken = copy.deepcopy(statement)
    broken["predicate"]["bounds"] = {"layers": "not a list", "network": {"upper": "NaN"}}
    broken["predicate"]["certified"]["accuracy"] = {"l2": {"0.1": 2.0e308 * 10}}
    broken["predicate"]["attacks"]["examples"] = [{"shape": [1, 4, 4], "original": [1, 2], "perturbed": []}]
    page = Page(render_report_html(broken))
    assert "This section could not be drawn: ValueError: no positive bound to draw" in page.text
    assert "example not drawn" in page.text
    assert page.find("section", id="policy")


@pytest.mark.parametrize("document", [[], "x", {"payloadType": "x", "payload": "!!", "signatures": []},
                                      {"_type": "https://in-toto.io/Statement/v1", "predicate": None}])
def test_not_a_report_is_a_value_error(document):
    with pytest.raises(ValueError):
        render_report_html(document)


# ------------------------------------------------------------------------------------------------------ helpers
def _level_at(path: list[tuple[float, float]], x: float) -> float:
    """The value of a step path at x (x strictly inside a horizontal segment)."""
    for (x0, y0), (x1, y1) in zip(path, path[1:]):
        if y0 == y1 and x0 < x < x1:
            return y0
    raise AssertionError(f"no horizontal segment of {path} contains {x}")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 100), min_size=1, max_size=8, unique=True),
       st.lists(st.floats(0.0, 1.0), min_size=9, max_size=9), st.data())
def test_the_band_contains_every_non_increasing_accuracy_curve(eps_steps, drops, data):
    """If true robust accuracy f is non-increasing, certified(e) <= f(e) <= attacked(e) at the measured e implies
    lower_steps <= f <= upper_steps everywhere."""
    eps = sorted(k / 100 for k in eps_steps)
    clean = 1.0

    def f(x):  # non-increasing: drops after each measured point, by fractions of what is left
        level = clean
        for e, d in zip(eps, drops):
            if x > e:
                level *= 1 - 0.5 * d
        return level

    certified = [(e, f(e) * data.draw(st.floats(0.0, 1.0))) for e in eps]
    attacked = [(e, f(e) + (1 - f(e)) * data.draw(st.floats(0.0, 1.0))) for e in eps]
    x_end = eps[-1] * 1.1
    lower, upper = lower_steps(certified + [(0.0, clean)], x_end), upper_steps(attacked, clean, x_end)
    breaks = sorted({0.0, x_end, *eps})
    for a, b in zip(breaks, breaks[1:]):
        x = (a + b) / 2
        assert _level_at(lower, x) <= f(x) + 1e-12 <= _level_at(upper, x) + 2e-12


def test_steps_are_tight_at_the_measured_points():
    upper = upper_steps([(0.1, 0.8), (0.3, 0.9), (0.5, 0.2)], 0.95, 1.0)
    assert upper == [(0.0, 0.95), (0.1, 0.95), (0.1, 0.8), (0.5, 0.8), (0.5, 0.2), (1.0, 0.2)]
    lower = lower_steps([(0.0, 0.95), (0.1, 0.7), (0.3, 0.75), (0.5, 0.1)], 1.0)
    assert _level_at(lower, 0.05) == 0.75 and _level_at(lower, 0.2) == 0.75 and _level_at(lower, 0.4) == 0.1
    assert _level_at(lower, 0.7) == 0.0


def _decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, *_ = header
    assert depth == 8
    return width, height, color, zlib.decompress(idat)


@pytest.mark.parametrize("shape", [(3, 5), (4, 2, 3)])
def test_png_round_trip(shape):
    pixels = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    width, height, color, raw = _decode_png(png_bytes(pixels))
    assert (height, width) == shape[:2] and color == (0 if len(shape) == 2 else 2)
    stride = width * (1 if len(shape) == 2 else 3) + 1
    rows = [raw[i * stride:(i + 1) * stride] for i in range(height)]
    assert all(r[0] == 0 for r in rows)
    assert b"".join(r[1:] for r in rows) == pixels.tobytes()


def test_png_refuses_other_arrays():
    with pytest.raises(ValueError):
        png_bytes(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError):
        png_bytes(np.zeros((2, 2, 4), dtype=np.uint8))


@pytest.mark.parametrize("shape, layout", [
    ((28, 28), (28, 28, 1, False)), ((1, 28, 28), (28, 28, 1, True)), ((3, 32, 32), (32, 32, 3, True)),
    ((32, 32, 3), (32, 32, 3, False)), ((1, 1, 8, 8), (8, 8, 1, True)), ((64,), (8, 8, 1, False)),
    ((10,), None), ((4, 28, 28), None), ((1, 1000, 1000), None), (("batch", 28), None), ((2,), None),
])
def test_image_layout(shape, layout):
    assert image_layout(shape) == layout


def test_channels_first_images_keep_their_pixels():
    chw = np.arange(3 * 2 * 4, dtype=float).reshape(3, 2, 4)
    assert np.array_equal(to_hwc(chw.tolist(), [3, 2, 4]), chw.transpose(1, 2, 0))
    with pytest.raises(ValueError):
        to_hwc([1.0, 2.0], [3, 2, 4])


@pytest.mark.parametrize("lo, hi", [(0, 1), (0, 0.37), (0.001, 0.0042), (-3, 250), (5, 5)])
def test_nice_ticks_cover_the_range_with_round_steps(lo, hi):
    ticks = nice_ticks(lo, hi)
    assert ticks and all(lo - 1e-12 <= t <= hi + 1e-12 for t in ticks)
    if hi > lo:
        steps = {round(b - a, 12) for a, b in zip(ticks, ticks[1:])}
        assert len(steps) == 1
        step = steps.pop()
        assert round(step / 10 ** math.floor(math.log10(step)), 6) in (1, 2, 5)


# ------------------------------------------------------------------------------------------- dashboard routes
TOKEN = "ui-test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def ui_app(tmp_path_factory):
    """The real app (with a real Redis for tokens' rate limits) and the dashboard blueprint registered."""
    from service.app import create_app
    from service.core.settings import Settings
    from service.core.signing import ensure_signing_key, load_signer
    from service.runner import EmbeddedRedis
    from service.ui import blueprint

    data_dir = tmp_path_factory.mktemp("ui-app")
    redis = EmbeddedRedis(str(data_dir / "redis")).start()
    try:
        settings = Settings(data_dir=str(data_dir), redis_url=redis.url, tokens=f"alice:{TOKEN}")
        ensure_signing_key(settings)
        app = create_app(settings, queue=object())
        if "ui" not in app.blueprints:
            app.register_blueprint(blueprint)
        yield app, load_signer(settings)
    finally:
        redis.stop()


def _post_render(client, document, token=TOKEN, content_type="application/json"):
    import json

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = document if isinstance(document, (bytes, str)) else json.dumps(document)
    return client.post("/v1/render?name=job-1.report.json", data=data, headers=headers, content_type=content_type)


def test_dashboard_page_and_its_assets(ui_app):
    client = ui_app[0].test_client()
    root = client.get("/")
    assert root.status_code == 302 and root.headers["Location"].endswith("/ui/")
    page = client.get("/ui/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["Content-Security-Policy"]
    parsed = Page(page.get_data(as_text=True))
    assets = [a["src"] for a in parsed.find("script")] + [a["href"] for a in parsed.find("link")]
    assert sorted(assets) == ["/ui/static/dashboard.css", "/ui/static/dashboard.js"]
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200 and len(response.get_data()) > 500
    ids = {a.get("id") for _, a in parsed.elements}
    assert {"token", "model-file", "dataset-file", "start", "job-progress", "report-frame"} <= ids
    (frame,) = parsed.find("iframe")
    assert "sandbox" in frame and not frame["sandbox"]  # no scripts, not this page's origin


def test_render_needs_a_valid_token(ui_app, signer):
    client = ui_app[0].test_client()
    envelope = envelope_for(example_predicate(), ui_app[1])
    assert _post_render(client, envelope, token=None).status_code == 401
    response = _post_render(client, envelope, token="wrong-token-0123456789")
    assert response.status_code == 401 and response.json["code"] == "invalid_token"


def test_render_verifies_with_the_service_key(ui_app, signer):
    client = ui_app[0].test_client()
    service_signer = ui_app[1]
    response = _post_render(client, envelope_for(example_predicate(), service_signer))
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    text = Page(response.get_data(as_text=True)).text
    assert f"VERIFIED: signed by trusted key {service_signer.keyid}" in text
    assert "lipcert verify job-1.report.json --key lipcert.pub.pem --model digits.onnx" in text

    other = _post_render(client, envelope_for(example_predicate(), signer))  # a key this service does not trust
    assert other.status_code == 200 and "NOT VERIFIED" in Page(other.get_data(as_text=True)).text


@pytest.mark.parametrize("body, content_type, status, code", [
    (b'{"payload": ', "application/json", 400, "truncated"),
    (b"[1, 2]", "application/json", 422, "not_a_report"),
    (b"{}", "text/plain", 415, "unsupported_media_type"),
])
def test_render_refuses_what_is_not_a_report(ui_app, body, content_type, status, code):
    response = _post_render(ui_app[0].test_client(), body, content_type=content_type)
    assert response.status_code == status and response.json["code"] == code


# ------------------------------------------------------------------------------------------ lipcert show --html
def _show_has_html_option() -> bool:
    from certify.cli import main

    return any("--html" in p.opts for p in main.commands["show"].params)


@pytest.mark.skipif(not _show_has_html_option(), reason="lipcert show has no --html option in this tree")
def test_show_writes_the_same_page(tmp_path, signer):
    from click.testing import CliRunner

    from certify.cli import main
    from certify.report.dsse import dump_envelope
    from certify.report.keys import public_pem

    report = tmp_path / "report.json"
    report.write_bytes(dump_envelope(envelope_for(example_predicate(), signer)))
    key = tmp_path / "key.pub.pem"
    key.write_text(signer.public_pem)
    assert public_pem(signer.public_key().public_key) == signer.public_pem
    out = tmp_path / "out.html"
    result = CliRunner().invoke(main, ["show", str(report), "--key", str(key), "--html", str(out)])
    assert result.exit_code == 0, result.output
    page = Page(out.read_text())
    assert len(page.find("svg")) >= 4 and f"VERIFIED: signed by trusted key {signer.keyid}" in page.text
    assert "lipcert verify" in page.text and "digits.onnx" in page.text


def test_extreme_bounds_keep_the_chart_readable(signer):
    p = example_predicate()
    p["bounds"]["layers"][0]["upper"] = 1e250
    p["bounds"]["layers"][1]["lower"] = 1e-30
    p["bounds"]["layers"][2]["upper"] = None
    page = Page(render_report_html(envelope_for(p, signer)))
    labels = [t for t in page.texts if t.startswith("1e")]
    assert "1e+250" in labels and "1e-30" in labels  # the two bars' values
    assert 5 <= len(labels) - 2 <= 12  # 281 decades, about ten of them labelled
    assert "no guaranteed bound" in page.text
    assert len(page.find("rect", **{"class": "bar-upper"})) == len(p["bounds"]["layers"])  # one layer has none


def test_no_broken_sample_is_said_in_words_and_warnings_show_as_banners():
    p = example_predicate()
    p["attacks"]["minimal_perturbation"] = {"l2": {"n_found": 0, "n_not_found": 12, "count": 0,
                                                   "estimate": "smallest perturbation found by the attacks"}}
    p["warnings"] = ["no dataset was given: certified accuracy and the attacks were skipped"]
    statement = build_statement(model_name="m.onnx", model_sha256=MODEL_SHA, predicate=p)
    text = Page(render_report_html(statement)).text
    assert "No sample was broken" in text and "could not be drawn" not in text
    assert "WARNING: no dataset was given" in text
