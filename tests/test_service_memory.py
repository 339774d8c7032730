"""Memory of upload checks: bounded in number per API process, and measured per file (peak RSS)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.api.common import upload_check_slot
from service.problems import ApiProblem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = """
import os, resource, sys
from service.api.models import describe_model
import certify.load, certify.summary, onnx.checker, onnx.shape_inference  # imports are not the check's memory
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
describe_model(sys.argv[1], 1 << 30)
growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(growth / os.path.getsize(sys.argv[1]))
"""


def test_concurrent_checks_are_bounded():
    """Eight checks, two slots: the first holder waits until a second is inside (so the overlap does not depend on
    thread scheduling on a loaded machine), and never more than two are inside at once."""
    inside, most = [], []
    lock = threading.Lock()
    two_inside = threading.Event()

    def check():
        with upload_check_slot(2):
            with lock:
                inside.append(1)
                most.append(len(inside))
                if len(inside) == 2:
                    two_inside.set()
            two_inside.wait(10)
            time.sleep(0.01)
            with lock:
                inside.pop()

    threads = [threading.Thread(target=check) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(most) == 2 and len(most) == 8


def test_a_check_that_cannot_get_a_slot_is_503():
    held = threading.Event()
    release = threading.Event()

    def hold():
        with upload_check_slot(2), upload_check_slot(2):  # both slots of this process
            held.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    try:
        with pytest.raises(ApiProblem) as e, upload_check_slot(2, wait_s=0.1):
            pass
        assert e.value.status == 503 and e.value.code == "upload_checks_busy"
    finally:
        release.set()
        t.join()


def test_peak_memory_of_checking_a_large_model(tmp_path):
    """A 64 MiB model (one dense weight, dynamic batch): the check's peak RSS growth, as a multiple of the file.
    The file's bytes and the parsed model are held once each while parsing; the checker and shape inference see a
    copy without the weights. Measured here: 2.04x for this model, 2.01x at 256 MiB (5.1x and 5.0x when the checker
    and shape inference were given the whole model)."""
    n = 16384
    w = numpy_helper.from_array(np.ones((n, 1024), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1024])], [w])
    path = tmp_path / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    del w, graph
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, env=env,
                         timeout=120, check=True)
    ratio = float(out.stdout.strip().splitlines()[-1])
    print(f"peak RSS growth while checking a {os.path.getsize(path) / 2**20:.0f} MiB model: {ratio:.2f}x the file")
    assert ratio < 2.5
