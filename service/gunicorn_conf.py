"""gunicorn hooks for the API processes."""

import json
import os

from gunicorn import util

_CODES = {400: "bad_request", 403: "forbidden", 414: "uri_too_long", 431: "request_header_too_large",
          500: "internal_error"}


def _problem_error(sock, status_int, reason, mesg):
    """gunicorn answers some requests itself, before the app sees them (a request line over
    ``limit_request_line`` gets 414, malformed HTTP 400); those answers are problem+json like every other error,
    not gunicorn's HTML page."""
    code = _CODES.get(status_int, f"http_{status_int}")
    body = json.dumps({"type": "https://lipcert.dev/problems/" + code, "title": reason, "status": status_int,
                       "detail": str(mesg) or reason, "code": code})
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/problem+json\r\n"
            f"Content-Length: {len(body.encode())}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin1") + body.encode())


util.write_error = _problem_error  # the workers call util.write_error for every error they answer themselves


def worker_exit(server, worker):
    """Leave without running C++ static destructors: torch/onnxruntime thread pools may abort at interpreter exit
    in a forked worker, which would turn a clean shutdown into SIGABRT. Responses are all sent by now."""
    os._exit(0)


def post_fork(server, worker):
    """Warm the job queue in each API process, after the fork (no broker connection crosses it), so the first job
    created in a process does not wait about 0.1 s for Celery's lazy set-up."""
    from service.wsgi import app

    warm = getattr(app.extensions["lipcert"].queue, "warm", None)
    if warm is not None:
        try:
            warm()
        except Exception as e:  # noqa: BLE001 - Redis may be starting; the first job then connects itself
            server.log.warning("job queue not warmed: %s", e)
