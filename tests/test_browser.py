"""In a real browser (headless Chromium through Selenium): the report page and the dashboard flow.

Screenshots are saved under test-artifacts/. Needs Debian's ``chromium`` and ``chromium-driver`` and the
``selenium`` package; the tests are skipped, saying what is missing, only where they are not installed. Selenium
Manager is never asked to download anything: the driver and browser paths are given explicitly.
"""

from __future__ import annotations

import os
import shutil
import threading

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = os.path.join(ROOT, "test-artifacts")
EXAMPLES = os.path.join(ROOT, "examples")
CHROMIUM = next(filter(None, (shutil.which(n) for n in ("chromium", "chromium-browser"))), None)
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver")
                                                else None)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage")


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (pip install selenium)"
    if CHROMIUM is None:
        return "no Chromium is installed (apt-get install chromium chromium-driver)"
    if CHROMEDRIVER is None:
        return "no chromedriver is installed (apt-get install chromium-driver)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=f"browser test skipped: {_missing()}")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: no downloads, no statistics
    os.environ.setdefault("SE_AVOID_STATS", "true")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument("--window-size=1200,1000")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def full_page_screenshot(driver, name: str) -> str:
    """Resize the window to the page and save a PNG under test-artifacts/; returns its path."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    height = driver.execute_script("return Math.max(document.body.scrollHeight, 800)")
    driver.set_window_size(1200, min(int(height) + 40, 12000))
    path = os.path.join(ARTIFACTS, name)
    assert driver.save_screenshot(path)
    driver.set_window_size(1200, 1000)
    return path


def drawn_charts(driver) -> list[dict]:
    """For every SVG chart on the page: its rendered size and how many shapes inside it have a non-empty box."""
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('svg.chart')).map(svg => {
          const box = svg.getBoundingClientRect();
          const shapes = Array.from(svg.querySelectorAll('rect, polygon, polyline, circle, line'));
          const drawn = shapes.filter(s => { const b = s.getBBox(); return b.width > 0 || b.height > 0; });
          return {label: svg.getAttribute('aria-label'), width: box.width, height: box.height,
                  shapes: shapes.length, drawn: drawn.length};
        });""")


def _example_report(signer) -> dict:
    from report_example import example_predicate

    from certify.report.dsse import sign_statement
    from certify.report.statement import build_statement

    rng = np.random.default_rng(0)
    p = example_predicate()
    examples = []
    for i in range(4):
        x = rng.random((1, 28, 28))
        adv = np.clip(x + rng.normal(0, 0.08, x.shape), 0, 1)
        examples.append({"index": i, "label": i, "clean_prediction": i, "adversarial_prediction": (i + 3) % 10,
                         "attack": "pgd", "eps": 1.0, "distance": float(np.linalg.norm(adv - x)),
                         "shape": [1, 28, 28], "original": x.tolist(), "perturbed": adv.tolist(),
                         "difference": (adv - x).tolist()})
    p["attacks"]["examples"] = {"l2": examples}
    p["attacks"]["minimal_perturbation"]["l2"]["distances"] = rng.gamma(4.0, 0.35, 492).tolist()
    statement = build_statement(model_name="mnist_cnn.onnx", model_sha256="c" * 64, predicate=p)
    return sign_statement(statement, signer)


def test_report_file_draws_its_charts(browser, tmp_path):
    from certify.report.html import render_report_html
    from certify.report.keys import Signer, generate_private_key

    signer = Signer(generate_private_key())
    page = tmp_path / "report.html"
    page.write_text(render_report_html(_example_report(signer), verified_keyid=signer.keyid))
    browser.get(page.as_uri())
    assert browser.title == "lipcert report: mnist_cnn.onnx"
    charts = drawn_charts(browser)
    labels = [c["label"] for c in charts]
    assert labels == ["Lipschitz bounds per layer (l2), log scale", "Certified and attacked accuracy, l2",
                      "Certified and attacked accuracy, linf", "Minimal perturbations, l2"]
    for chart in charts:
        assert chart["width"] > 400 and chart["height"] > 100, chart
        assert chart["drawn"] >= 5, chart
    # Every adversarial example image was decoded by the browser (the PNGs are valid).
    sizes = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]);")
    assert sizes == [[True, 28, 28]] * 12
    shot = full_page_screenshot(browser, "report-page.png")
    assert os.path.getsize(shot) > 10_000


# ---------------------------------------------------------------------------------------------------- dashboard
@pytest.fixture(scope="module")
def dashboard(service):
    """The API with the dashboard, in this process, on the test service's Redis, store and workers."""
    from werkzeug.serving import make_server

    from service.app import create_app
    from service.core.settings import Settings
    from service.ui import blueprint

    app = create_app(Settings.from_env(service.env))
    if "ui" not in app.blueprints:
        app.register_blueprint(blueprint)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


def _wait(driver, condition, timeout: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)
    except Exception:
        error = driver.find_element("id", "error").text
        message = driver.find_element("id", "job-message").text
        raise AssertionError(f"timed out waiting for {what}; page error {error!r}, job message {message!r}") from None


def test_dashboard_upload_job_progress_report(browser, dashboard):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    from service_fixtures import TOKENS

    browser.get(dashboard + "/")
    assert browser.current_url == dashboard + "/ui/"
    browser.find_element(By.ID, "token").send_keys(TOKENS["alice"])
    browser.find_element(By.ID, "token-save").click()
    assert "A token is set" in browser.find_element(By.ID, "token-status").text
    browser.find_element(By.ID, "model-file").send_keys(os.path.join(EXAMPLES, "digits_mlp.onnx"))
    browser.find_element(By.ID, "dataset-file").send_keys(os.path.join(EXAMPLES, "digits_test.npz"))
    eps = browser.find_element(By.ID, "epsilons")
    eps.clear()
    eps.send_keys("0.05, 0.2")
    Select(browser.find_element(By.ID, "attacks")).select_by_value("none")
    samples = browser.find_element(By.ID, "samples")
    samples.clear()
    samples.send_keys("8")
    # Record every state and progress value the page shows, to see it follow the job without a reload.
    browser.execute_script("""
        window.seen = [];
        const record = () => window.seen.push([document.getElementById('job-state').textContent,
                                               Number(document.getElementById('job-progress').value)]);
        new MutationObserver(record).observe(document.getElementById('progress-section'),
                                             {subtree: true, childList: true, characterData: true,
                                              attributes: true});""")
    browser.find_element(By.ID, "start").click()
    _wait(browser, lambda d: d.find_element(By.ID, "job-state").text == "succeeded", 120, "the job to succeed")
    job_id = browser.find_element(By.ID, "job-id").text
    seen = browser.execute_script("return window.seen")
    states = [state for state, _ in seen if state]
    assert states[0] in ("queued", "running") and states[-1] == "succeeded", states
    progress = [value for _, value in seen]
    assert progress == sorted(progress) and progress[-1] == 1.0, progress
    assert not browser.find_element(By.ID, "job-warnings").is_displayed()  # a dataset was given
    stages = browser.find_element(By.ID, "job-stages").text
    assert "load: done" in stages and "report: done" in stages

    _wait(browser, lambda d: d.find_element(By.ID, "report-section").is_displayed(), 30, "the report")
    assert browser.find_element(By.ID, "report-download-json").get_attribute("download") == f"{job_id}.report.json"
    full_page_screenshot(browser, "dashboard.png")
    browser.switch_to.frame(browser.find_element(By.ID, "report-frame"))
    try:
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "svg.chart"), 30, "the report's charts")
        text = browser.find_element(By.TAG_NAME, "body").text
        assert "VERIFIED: signed by trusted key" in text and "NOT VERIFIED" not in text
        assert f"lipcert verify {job_id}.report.json --key lipcert.pub.pem --model digits_mlp.onnx" in text
        charts = drawn_charts(browser)
        labels = [c["label"] for c in charts]
        assert labels[0].startswith("Lipschitz bounds per layer")
        assert all(c["width"] > 400 and c["drawn"] >= 3 for c in charts), charts
        bars = browser.find_elements(By.CSS_SELECTOR, "rect.bar-upper")
        assert len(bars) >= 4 and all(b.size["width"] > 0 for b in bars)
        full_page_screenshot(browser, "dashboard-report.png")
    finally:
        browser.switch_to.default_content()

    # The recent-jobs table lists the job.
    browser.find_element(By.ID, "jobs-refresh").click()
    _wait(browser, lambda d: job_id in d.find_element(By.ID, "jobs").text, 10, "the job list")
    assert "digits_mlp.onnx" in browser.find_element(By.ID, "jobs").text  # the uploaded name, not only the digest
    browser.set_window_size(1400, 1000)
    widths = browser.execute_script("""
        const card = document.getElementById('jobs-section');
        return [card.clientWidth, card.scrollWidth, card.querySelector('table').getBoundingClientRect().width];""")
    assert widths[1] <= widths[0] and widths[2] <= widths[0], widths  # the table stays inside its card
