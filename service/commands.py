"""``lipcert serve`` (everything on one machine), ``lipcert api`` and ``lipcert worker`` (one part each).

The ``lipcert`` group finds these commands through the ``lipcert.commands`` entry points (pyproject.toml), so the
library never imports the service. They start the API (gunicorn) and the workers (Celery) as child processes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import click

WORKER_NICE = click.option("--worker-nice", type=click.IntRange(0, 19), default=None,
                           help="Nice value of the workers, so API requests win over jobs on shared cores "
                                "(LIPCERT_WORKER_NICE; default 10; 0: the API's priority).")


def _service_env(data_dir: str | None, worker_nice: int | None = None) -> dict:
    env = dict(os.environ)
    if worker_nice is not None:
        env["LIPCERT_WORKER_NICE"] = str(worker_nice)
    if data_dir:
        env["LIPCERT_DATA_DIR"] = os.path.abspath(data_dir)
    env.setdefault("LIPCERT_DATA_DIR", os.path.abspath("lipcert-data"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _lipcert_command() -> str:
    """The ``lipcert`` executable by full path, so a printed hint works in a fresh shell without the venv active."""
    import shutil

    beside = os.path.join(os.path.dirname(sys.executable), "lipcert")
    found = beside if os.access(beside, os.X_OK) else shutil.which("lipcert")
    return found or f"{sys.executable} -m certify"


def _devices(device: str, workers: int) -> list[str]:
    """One worker per GPU when CUDA is there (``auto``), else ``workers`` CPU workers."""
    if device == "auto":
        try:
            import torch

            count = torch.cuda.device_count()
        except Exception:
            count = 0
        return [f"cuda:{i}" for i in range(count)] if count else ["cpu"] * workers
    return [device] * workers


def _tokens(env: dict, data_dir: str) -> str | None:
    """Use the configured tokens; with none, create one for tenant ``default`` (returned once, stored hashed)."""
    from service.core.tokens import create_tokens_file

    if env.get("LIPCERT_TOKENS") or env.get("LIPCERT_TOKENS_FILE"):
        return None
    path = os.path.join(data_dir, "tokens.txt")
    env["LIPCERT_TOKENS_FILE"] = path
    if os.path.exists(path):
        return None
    return create_tokens_file(path)


def _check_config(env: dict, signing: bool = False, tokens: bool = True):
    """Read the settings (and, with ``tokens``, the tokens) the children will read (and, with ``signing``, make sure
    of the signing key), so a bad one is one line and exit 2, not a traceback from every child."""
    from service.core.settings import Settings
    from service.core.signing import ensure_signing_key
    from service.core.tokens import TokenRegistry

    try:
        settings = Settings.from_env(env)
        if tokens:
            TokenRegistry.from_sources(settings.tokens, settings.tokens_file)
        if signing:
            ensure_signing_key(settings)
    except (ValueError, OSError) as e:
        click.echo(f"error: invalid_config: {e}", err=True)
        sys.exit(2)
    return settings


def _redacted(url: str) -> str:
    """A Redis URL without its password (the URL is printed; the password stays in the data directory)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return url.replace(f":{parts.password}@", ":***@") if parts.password else url


def _restart(child) -> None:
    """Start a child again; the embedded Redis comes back from its append-only file on the same port and password,
    so the API and workers reconnect by themselves."""
    try:
        child.start()
    except RuntimeError as e:  # e.g. the port was taken meanwhile; try again at the next check
        click.echo(f"{child.name} did not restart: {e}", err=True)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the API listens on.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--data-dir", default="lipcert-data", show_default=True, type=click.Path(file_okay=False),
              help="Artifacts, reports, the embedded Redis data, tokens and the signing key.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64), help="CPU worker processes.")
@click.option("--device", default="auto", show_default=True, help="auto (one worker per GPU, else CPU), cpu, cuda:N.")
@click.option("--api-processes", default=2, show_default=True, type=click.IntRange(1, 64))
@WORKER_NICE
def serve(host, port, data_dir, workers, device, api_processes, worker_nice):
    """Run Redis (embedded unless REDIS_URL is set), the API and the workers until Ctrl-C or SIGTERM."""
    from service.runner import Child, EmbeddedRedis, api_argv, wait_http, worker_argv

    env = _service_env(data_dir, worker_nice)
    data_dir = env["LIPCERT_DATA_DIR"]
    os.makedirs(data_dir, mode=0o700, exist_ok=True)  # keys, tokens and the Redis password live here
    token = _tokens(env, data_dir)
    _check_config(env, signing=True)
    children: list[Child] = []
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if not env.get("REDIS_URL"):
            redis_child = EmbeddedRedis(os.path.join(data_dir, "redis")).start()
            children.append(redis_child)
            env["REDIS_URL"] = redis_child.url
        api = Child("api", api_argv(host, port, processes=api_processes), env).start()
        children.append(api)
        for i, dev in enumerate(_devices(device, workers)):
            worker_env = dict(env, LIPCERT_DEVICE=dev)
            children.append(Child(f"worker{i}", worker_argv(f"worker{i}@%h", device=dev), worker_env).start())
        wait_http(f"http://{host}:{port}/healthz", timeout=120, child=api)
        url = f"http://{host}:{port}"
        click.echo(f"lipcert is serving on {url}  (data in {data_dir}; Redis at {_redacted(env['REDIS_URL'])})")
        click.echo(f"dashboard: {url}/ui/   API description: {url}/openapi.json")
        if token:
            click.echo(f"API token for tenant 'default' (shown once, stored hashed in {env['LIPCERT_TOKENS_FILE']}):")
            click.echo(f"  {token}")
        shown = token or "$LIPCERT_TOKEN"
        click.echo("try:")
        click.echo(f"  curl -s -H 'Authorization: Bearer {shown}' --data-binary @examples/digits_mlp.onnx "
                   f"-H 'Content-Type: application/octet-stream' {url}/v1/models")
        click.echo(f"  LIPCERT_URL={url} LIPCERT_TOKEN={shown} {_lipcert_command()} submit examples/digits_mlp.onnx "
                   "--data examples/digits_test.npz --wait")
        click.echo("Ctrl-C stops everything.")
        while not stop.wait(1.0):
            for child in children:
                if not child.running:
                    if child.name.startswith("worker") or child.name == "redis":
                        click.echo(f"{child.name} exited ({child.proc.returncode}); restarting it", err=True)
                        _restart(child)
                    else:
                        click.echo(f"{child.name} exited ({child.proc.returncode}); stopping", err=True)
                        stop.set()
    finally:
        click.echo("stopping ...", err=True)
        for child in reversed(children):
            if child.name != "redis":
                child.signal_group(signal.SIGTERM)
        for child in reversed(children):
            child.stop(timeout=20)
        click.echo("stopped", err=True)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--processes", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 256))
def api(host, port, processes, threads):
    """Run only the API (gunicorn); REDIS_URL and the LIPCERT_* settings come from the environment."""
    from service.runner import api_argv

    env = _service_env(None)
    _check_config(env)
    argv = api_argv(host, port, processes=processes, threads=threads)
    os.execvpe(argv[0], argv, env)


@click.command()
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda:N (one worker process per GPU).")
@click.option("--pool", type=click.Choice(["prefork", "solo", "threads"]), default=None,
              help="Default: prefork (one child) on CPU, solo on CUDA (nothing forks after CUDA starts).")
@click.option("--name", default=None, help="Worker name (default: lipcert-<device>@<host>).")
@click.option("--loglevel", default="INFO", show_default=True)
@WORKER_NICE
def worker(device, pool, name, loglevel, worker_nice):
    """Run one worker process for DEVICE; REDIS_URL and the LIPCERT_* settings come from the environment."""
    import re

    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise click.BadParameter("cpu or cuda:N", param_hint="--device")
    if pool in ("prefork", "threads") and device.startswith("cuda"):
        click.echo("note: a CUDA worker should use --pool solo (one process per GPU)", err=True)
    from service.runner import worker_argv

    env = _service_env(None, worker_nice)
    env["LIPCERT_DEVICE"] = device
    _check_config(env, tokens=False)  # workers read no tokens
    argv = worker_argv(name or f"lipcert-{device.replace(':', '')}@%h", device=device, pool=pool, loglevel=loglevel)
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)
