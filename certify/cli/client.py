"""``lipcert submit``, ``lipcert status``, ``lipcert report``: a small client for the lipcert API.

The server and token come from ``--url``/``--token`` or ``LIPCERT_URL``/``LIPCERT_TOKEN``. API errors (problem+json)
print ``error: <code>: <detail>`` and exit 2, like every other refusal of the CLI.
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

from certify.cli import main
from certify.cli._options import (
    analyses_option,
    attacks_option,
    certifiers_option,
    eps_option,
    input_range_option,
    norms_option,
    preprocessing,
    preprocessing_options,
    properties_options,
)
from certify.defaults import DEFAULTS
from certify.errors import ModelRejected
from certify.progress import Bar

TERMINAL = ("succeeded", "failed", "cancelled")


class ApiClient:
    def __init__(self, url: str, token: str | None, timeout: float = 60.0):
        import requests

        self.base = url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def call(self, method: str, path: str, **kwargs):
        import requests

        try:
            r = self.session.request(method, self.base + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as e:
            _fail("unreachable", f"cannot reach {self.base}: {e.__class__.__name__}")
        if r.status_code >= 400:
            try:
                body = r.json()
                _fail(body.get("code", f"http_{r.status_code}"), body.get("detail", r.reason)
                      + (f" {json.dumps(body['errors'])}" if body.get("errors") else ""))
            except ValueError:
                _fail(f"http_{r.status_code}", r.reason)
        return r

    def upload(self, kind: str, path: str) -> dict:
        with open(path, "rb") as f:
            return self.send(kind, f, os.path.basename(path))

    def send(self, kind: str, data, name: str) -> dict:
        """POST ``data`` (bytes or a file) to /v1/``kind``; the record the server keeps."""
        return self.call("POST", f"/v1/{kind}", data=data, params={"name": name},
                         headers={"Content-Type": "application/octet-stream"}).json()

    def job(self, job_id: str) -> dict:
        return self.call("GET", f"/v1/jobs/{job_id}").json()

    def wait(self, job_id: str, interval: float = 0.5, show: bool = True) -> dict:
        """Poll until the job ends, with a progress bar on stderr (a terminal only) that stops where the job did."""
        job = self.job(job_id)
        bar = Bar(job_id[:12]) if show and sys.stderr.isatty() else None
        try:
            while True:
                if bar is not None:
                    bar.update(job.get("progress") or 0.0, f"{job['state']} {job.get('stage') or ''}",
                               eta=job.get("eta_s"))
                if job["state"] in TERMINAL:
                    return job
                time.sleep(interval)
                job = self.job(job_id)
        finally:
            if bar is not None:
                bar.close()


def _fail(code: str, message: str):
    click.echo(f"error: {code}: {message}", err=True)
    sys.exit(2)


def _connection(f):
    f = click.option("--url", envvar="LIPCERT_URL", default="http://127.0.0.1:8000", show_default=True,
                     help="The API (env LIPCERT_URL).")(f)
    return click.option("--token", envvar="LIPCERT_TOKEN", default=None, help="Bearer token (env LIPCERT_TOKEN).")(f)


def _finish(job: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(job, indent=2))
    else:
        line = f"{job['id']}  {job['state']}  stage={job.get('stage')}  progress={job.get('progress', 0):.0%}"
        if job.get("eta_s") and job["state"] == "running":
            line += f"  eta={job['eta_s']:.0f}s"
        click.echo(line)
        if job.get("error"):
            click.echo(f"error: {job['error']['code']}: {job['error']['message']}", err=True)
    if job["state"] in ("failed", "cancelled"):
        sys.exit(1)


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--data", type=click.Path(exists=True, dir_okay=False), help="An .npz with x and y.")
@norms_option
@eps_option
@certifiers_option
@attacks_option
@click.option("--samples", type=int, default=None, help=f"[default: {DEFAULTS['samples']}]")
@click.option("--seed", type=int, default=None, help=f"[default: {DEFAULTS['seed']}]")
@input_range_option
@preprocessing_options
@click.option("--time-budget", type=float, default=None, help="Seconds before the job is stopped.")
@click.option("--wait/--no-wait", default=False, help="Poll with a progress bar until the job ends.")
@analyses_option
@properties_options
@click.option("--json", "as_json", is_flag=True)
@_connection
def submit(model, data, norms, epsilons, certifiers, attacks, samples, seed, input_range, scale, mean, std,
           channels_last, time_budget, wait, as_json, url, token, analyses, properties, property_timeout):
    """Upload MODEL (and --data), create a job and print its id."""
    given = {"norms": norms, "epsilons": epsilons, "certifiers": certifiers, "attacks": attacks, "samples": samples,
             "seed": seed, "time_budget_s": time_budget, "input_range": input_range,
             "preprocessing": preprocessing(scale, mean, std, channels_last), "analyses": analyses,
             "properties": properties, "property_timeout_s": property_timeout}
    config = {k: v for k, v in given.items() if v is not None}
    from certify.config import load_config

    try:
        load_config(config)  # the server checks the same; refuse before uploading anything
    except ModelRejected as e:
        _fail(e.code, e.message)
    client = ApiClient(url, token)
    # properties go up as files, named by id in the job (whose body is capped far below a large .vnnlib)
    config["properties"] = [{"name": p["name"], "property_id": client.send("properties", p["vnnlib"].encode(),
                                                                           f"{p['name']}.vnnlib")["id"]}
                            for p in config.get("properties") or []]
    body = {"model": client.upload("models", model)["id"], **config}
    if data:
        body["dataset"] = client.upload("datasets", data)["id"]
    job = client.call("POST", "/v1/jobs", json=body).json()
    if not wait:
        click.echo(json.dumps(job, indent=2) if as_json else job["id"])
        return
    click.echo(f"job {job['id']} queued", err=True)
    _finish(client.wait(job["id"], show=not as_json), as_json)


@main.command()
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Poll with a progress bar until the job ends.")
@click.option("--json", "as_json", is_flag=True)
@_connection
def status(job_id, wait, as_json, url, token):
    """Show a job's state, stage, progress and ETA (exit 1 when it failed or was cancelled)."""
    client = ApiClient(url, token)
    _finish(client.wait(job_id, show=not as_json) if wait else client.job(job_id), as_json)


@main.command()
@click.argument("job_id", required=False)
@click.option("--model", default=None, help="Instead of JOB_ID: the latest report for this sha256:<hex> digest.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write here (default stdout).")
@_connection
def report(job_id, model, output, url, token):
    """Fetch the signed report (DSSE envelope) of JOB_ID, or the latest one for --model."""
    if bool(job_id) == bool(model):
        _fail("bad_argument", "give a JOB_ID or --model, not both")
    client = ApiClient(url, token)
    r = client.call("GET", f"/v1/jobs/{job_id}/report") if job_id else client.call(
        "GET", "/v1/reports", params={"model": model})
    if output:
        with open(output, "wb") as f:
            f.write(r.content)
        click.echo(f"wrote {output} (job {r.headers.get('X-Lipcert-Job', job_id)})", err=True)
    else:
        sys.stdout.write(r.text)
