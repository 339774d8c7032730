"""The service's building blocks without processes: tokens, the artifact store, dataset checks, settings."""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import pytest

from certify.errors import ModelRejected
from service.core.settings import Settings
from service.core.store import LocalArtifactStore, TooLarge
from service.core.tokens import TokenRegistry, create_tokens_file
from service.datasets import check_fit, inspect_dataset


def test_tokens_from_env_and_file(tmp_path):
    path = tmp_path / "tokens.txt"
    token = create_tokens_file(str(path), "default")
    text = path.read_text()
    assert token not in text and hashlib.sha256(token.encode()).hexdigest() in text  # stored hashed only
    with open(path, "a") as f:
        f.write("ci:ci-token-0123456789abcdef:ro\n")
    reg = TokenRegistry.from_sources("alice:alice-token-0123456789abcdef", str(path))
    assert reg.lookup(token).name == "default" and not reg.lookup(token).read_only
    assert reg.lookup("alice-token-0123456789abcdef").name == "alice"
    assert reg.lookup("ci-token-0123456789abcdef").read_only
    assert reg.lookup("alice-token-0123456789abcdeX") is None
    assert reg.lookup("") is None


@pytest.mark.parametrize("entry", ["alice", "alice:short", "bad tenant:0123456789abcdef0", "a:sha256=12"])
def test_bad_token_entries_are_refused(entry):
    with pytest.raises(ValueError):
        TokenRegistry.from_sources(entry)


def test_store_is_content_addressed_and_atomic(tmp_path):
    store = LocalArtifactStore(str(tmp_path))
    data = b"abc" * 1000
    first = store.put_stream("models", iter([data[:100], data[100:]]), max_bytes=10_000)
    again = store.put_stream("models", iter([data]), max_bytes=10_000)
    assert first.digest == again.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert first.created and not again.created and first.size == len(data)
    assert open(store.local_path("models", first.digest), "rb").read() == data
    with pytest.raises(TooLarge):
        store.put_stream("models", iter([b"x" * 600, b"y" * 600]), max_bytes=1000)
    assert sorted(os.listdir(tmp_path / "models")) == [first.digest.split(":")[1]]  # no partial file left
    with pytest.raises(ValueError):
        store.local_path("models", "sha256:../../etc/passwd")


def test_reports_are_written_once(tmp_path):
    store = LocalArtifactStore(str(tmp_path))
    assert store.put_once("reports", "job_1.json", b"first")
    assert not store.put_once("reports", "job_1.json", b"second")
    assert store.read("reports", "job_1.json") == b"first"
    assert store.read("reports", "job_2.json") is None
    with pytest.raises(ValueError):
        store.put_once("reports", "../escape", b"x")
    assert [n for n in os.listdir(tmp_path / "reports") if n.startswith(".")] == []


def _npz(path, **arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    return str(path)


def test_dataset_checks(tmp_path):
    good = _npz(tmp_path / "good.npz", x=np.zeros((6, 64), np.float32), y=np.arange(6))
    info = inspect_dataset(good, 10**6)
    assert info == {"samples": 6, "x_shape": [6, 64], "x_dtype": "float32", "y_dtype": "int64", "classes": 6,
                    "x_min": 0.0, "x_max": 0.0}
    model = {"inputs": [{"name": "x", "shape": ["batch", 64]}]}
    check_fit(model, info)
    check_fit(model, info, {"input_range": (0.0, 1.0)})
    with pytest.raises(ModelRejected) as e:
        check_fit(model, info, {"input_range": (0.5, 1.0)})
    assert e.value.code == "input_out_of_range"
    with pytest.raises(ModelRejected) as e:
        check_fit({"inputs": [{"name": "x", "shape": ["batch", 32]}]}, info)
    assert e.value.code == "dataset_model_mismatch"
    cases = {
        "dataset_pickled": dict(x=np.array([object()] * 2, dtype=object), y=np.arange(2)),
        "bad_dataset": dict(x=np.zeros((3, 4), np.float32), y=np.arange(4)),
        "dataset_missing_arrays": dict(x=np.zeros((3, 4), np.float32)),
    }
    for code, arrays in cases.items():
        with pytest.raises(ModelRejected) as e:
            inspect_dataset(_npz(tmp_path / f"{code}.npz", **arrays), 10**6)
        assert e.value.code == code
    with pytest.raises(ModelRejected) as e:  # declared sizes over the cap: refused before reading
        inspect_dataset(_npz(tmp_path / "big.npz", x=np.zeros((1000, 64), np.float32), y=np.arange(1000)), 10_000)
    assert e.value.code == "dataset_too_large"


def test_settings_from_env():
    s = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0", "LIPCERT_JOB_QUOTA": "3"})
    assert s.redis_url == "redis://127.0.0.1:1/0" and s.job_quota == 3
    with pytest.raises(ValueError):
        Settings.from_env({"LIPCERT_JOB_QUOTA": "many"})
    assert s.worker_nice == 10 and Settings.from_env({"LIPCERT_WORKER_NICE": "0"}).worker_nice == 0
    for bad in ("-5", "20", "low"):
        with pytest.raises(ValueError):
            Settings.from_env({"LIPCERT_WORKER_NICE": bad})


def test_a_worker_lowers_its_priority_and_never_raises_it():
    """In a child process: the nice value changes for good."""
    import subprocess
    import sys

    code = ("import os; from worker.priority import lower_priority as p; "
            "print(p(7), p(3), os.getpriority(os.PRIO_PROCESS, 0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert out == [str(max(own, 7))] * 3


def test_the_default_job_memory_budget_stays_within_the_container_limit(tmp_path):
    """Three quarters of the cgroup's limit (v2 memory.max, v1 memory.limit_in_bytes) when it is below the
    machine's memory; the machine's when there is no limit ("max", v1's huge "unlimited", no file)."""
    from worker.memory import container_limit_bytes, default_budget_mb

    machine = default_budget_mb(str(tmp_path / "none"))
    assert container_limit_bytes(str(tmp_path / "none")) is None and machine > 0
    v2, v1 = tmp_path / "v2", tmp_path / "v1" / "memory"
    v2.mkdir()
    v1.mkdir(parents=True)
    (v2 / "memory.max").write_text("1073741824\n")
    (v1 / "memory.limit_in_bytes").write_text("536870912\n")
    assert default_budget_mb(str(v2)) == min(768, machine) and default_budget_mb(str(v1.parent)) == min(384, machine)
    (v2 / "memory.max").write_text("max\n")
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert default_budget_mb(str(v2)) == default_budget_mb(str(v1.parent)) == machine
