"""gunicorn hooks for the API processes."""

import os


def worker_exit(server, worker):
    """Leave without running C++ static destructors: torch/onnxruntime thread pools may abort at interpreter exit
    in a forked worker, which would turn a clean shutdown into SIGABRT. Responses are all sent by now."""
    os._exit(0)
