"""The deployment files, checked without a Docker engine or a cluster.

The compose file, the Kubernetes manifests and the Prometheus rules are loaded as YAML and checked against what
the code really provides: the `lipcert` commands and options the containers run (parsed by the real click
commands), the HTTP routes the probes hit (from the real Flask app), the metric names the alerts use, the
environment variables the settings read, and the files the Dockerfile copies.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"
PROMETHEUS = ROOT / "deploy" / "prometheus"
API_PORT = 8000


# ------------------------------------------------------------------------------------------------------ helpers
def load_compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def load_k8s() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s_kind(kind: str) -> list[dict]:
    return [d for d in load_k8s() if d["kind"] == kind]


def parse_lipcert(argv: list[str]):
    """Parse ``lipcert ARGV`` with the real click commands, without running anything; returns the command context."""
    from certify.cli import main

    ctx = main.make_context("lipcert", list(argv), resilient_parsing=False)
    name, command, rest = main.resolve_command(ctx, ctx.protected_args + ctx.args)
    return command.make_context(name, rest, parent=ctx)


def dockerfile_stages() -> dict[str, dict]:
    """Stage name -> {"from": base, "lines": [instructions]} (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.M))
    stages, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM (\S+) AS (\S+)", line)
        if m:
            base = re.sub(r"\$\{(\w+)\}", lambda a: args[a.group(1)], m.group(1))
            current = stages[m.group(2)] = {"from": base, "lines": []}
        elif current is not None:
            current["lines"].append(line)
    return stages


def stage_chain(stages: dict, name: str) -> list[dict]:
    """The stage and every stage it is built on, nearest first."""
    chain = []
    while name in stages:
        chain.append(stages[name])
        name = stages[name]["from"]
    return chain


def exec_form(instruction: str, line_list: list[str]) -> list[str] | None:
    """The JSON (exec) form of the last ``instruction`` among a stage's lines."""
    found = [line for line in line_list if line.startswith(instruction + " ")]
    return json.loads(found[-1][len(instruction) + 1:]) if found else None


@functools.cache
def flask_routes() -> frozenset[str]:
    """The routes of the real app (no Redis is contacted to build it)."""
    from service.app import create_app
    from service.core.settings import Settings

    with tempfile.TemporaryDirectory() as data_dir:
        app = create_app(Settings(data_dir=data_dir, redis_url="redis://127.0.0.1:1/0"), queue=object())
        return frozenset(rule.rule for rule in app.url_map.iter_rules())


def canonical(name: str) -> str:
    """A distribution name in PEP 503 normal form."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def settings_env_names() -> set[str]:
    return set(re.findall(r'"((?:LIPCERT|REDIS)_[A-Z_]+)"', (ROOT / "service" / "core" / "settings.py").read_text()))


# ------------------------------------------------------------------------------------------------------ compose
def test_compose_has_the_services_volumes_and_secrets():
    compose = load_compose()
    assert {"redis", "api", "worker", "worker-cpu", "flower"} <= set(compose["services"])
    assert {"redis-data", "artifacts"} <= set(compose["volumes"])
    assert {"signing_key", "signing_public_key", "api_tokens"} <= set(compose["secrets"])
    for name, secret in compose["secrets"].items():
        assert "file" in secret and "environment" not in secret, name


def test_redis_is_7_with_aof_on_a_named_volume():
    redis = load_compose()["services"]["redis"]
    assert re.fullmatch(r"redis:7\.\d+\.\d+(-\w+)?", redis["image"])
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"  # a queue must never be evicted
    assert "redis-data:/data" in redis["volumes"]
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_api_runs_lipcert_api_with_a_readyz_health_check():
    api = load_compose()["services"]["api"]
    ctx = parse_lipcert(api["command"])
    assert ctx.command.name == "api" and ctx.params["host"] == "0.0.0.0" and ctx.params["port"] == API_PORT
    assert f"{API_PORT}:{API_PORT}" in api["ports"]
    probe = " ".join(api["healthcheck"]["test"])
    assert f"http://127.0.0.1:{API_PORT}/readyz" in probe
    assert "/readyz" in flask_routes()
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"


def test_gpu_worker_reserves_nvidia_gpus_and_scales():
    worker = load_compose()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert worker["profiles"] == ["gpu"]
    assert worker["build"]["args"]["TORCH_VARIANT"].startswith("cu")
    # --scale needs replicas without fixed names or host ports.
    assert "container_name" not in worker and "ports" not in worker
    # The GPU claiming script is what runs, and it is installed in the image under that name.
    assert worker["entrypoint"] == ["lipcert-gpu-worker"]
    assert "/usr/local/bin/lipcert-gpu-worker" in DOCKERFILE.read_text()
    assert "gpu-locks:/run/lipcert-gpu" in worker["volumes"]


def test_cpu_worker_profile_runs_lipcert_worker_on_cpu():
    worker = load_compose()["services"]["worker-cpu"]
    assert worker["profiles"] == ["cpu"] and "deploy" not in worker
    assert worker["build"]["args"]["TORCH_VARIANT"] == "cpu"
    ctx = parse_lipcert(worker["command"])
    assert ctx.command.name == "worker" and ctx.params["device"] == "cpu"


def test_api_and_workers_share_the_artifact_volume_at_their_data_dir():
    services = load_compose()["services"]
    for name in ("api", "worker", "worker-cpu"):
        data_dir = services[name]["environment"]["LIPCERT_DATA_DIR"]
        assert f"artifacts:{data_dir}" in services[name]["volumes"], name
        assert services[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0"


def test_signing_key_is_a_secret_that_only_workers_get():
    services = load_compose()["services"]
    for name in ("worker", "worker-cpu"):
        env = services[name]["environment"]
        assert "signing_key" in services[name]["secrets"]
        assert env["LIPCERT_SIGNING_KEY"] == "/run/secrets/signing_key"
    api = services["api"]
    assert "signing_key" not in api["secrets"] and "LIPCERT_SIGNING_KEY" not in api["environment"]
    assert api["environment"]["LIPCERT_PUBLIC_KEYS"] == "/run/secrets/signing_public_key"
    assert api["environment"]["LIPCERT_TOKENS_FILE"] == "/run/secrets/api_tokens"
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            assert "BEGIN" not in str(value), f"{name}: {key} holds key material"


def test_compose_environment_uses_names_the_settings_read():
    known = settings_env_names()
    for name in ("api", "worker", "worker-cpu"):
        for key in load_compose()["services"][name]["environment"]:
            assert key in known, f"{name}: {key} is not read by service/core/settings.py"


def test_flower_is_optional_and_local_only():
    flower = load_compose()["services"]["flower"]
    assert flower["profiles"] == ["flower"]
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"])
    assert flower["environment"]["CELERY_BROKER_URL"] == "redis://redis:6379/0"


def test_every_image_is_pinned():
    images = [s["image"] for s in load_compose()["services"].values()]
    images += [c["image"] for d in k8s_kind("StatefulSet") for c in d["spec"]["template"]["spec"]["containers"]]
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and re.search(r"\d+\.\d+", tag), image


def test_compose_builds_existing_dockerfile_targets():
    stages = dockerfile_stages()
    for name, service in load_compose()["services"].items():
        if "build" in service:
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]) == DOCKERFILE, name
            assert service["build"]["target"] in stages, name


# --------------------------------------------------------------------------------------------------- Dockerfile
def test_dockerfile_final_stages_are_non_root_without_build_tools():
    stages = dockerfile_stages()
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", stages["build"]["from"])
    for target in ("api", "worker"):
        chain = stage_chain(stages, target)
        lines = [line for stage in chain for line in stage["lines"]]
        users = [line.split()[1] for line in lines if line.startswith("USER ")]
        assert users and not users[0].startswith(("0", "root")), target
        assert not any(re.search(r"\b(gcc|g\+\+|build-essential|make|apt-get install)\b", line) for line in lines)
        copies = [line for line in lines if line.startswith("COPY --from=")]
        assert copies == ["COPY --from=build /opt/lipcert /opt/lipcert"], target
    assert any("pip uninstall -y pip setuptools wheel" in line for line in stages["build"]["lines"])


def test_dockerfile_copies_only_existing_source_and_never_keys():
    for stage in dockerfile_stages().values():
        for line in stage["lines"]:
            if line.startswith("COPY ") and "--from=" not in line:
                sources = [p for p in line.split()[1:-1] if not p.startswith("--")]
                for source in sources:
                    assert (ROOT / source).exists(), source
                    assert not source.endswith((".pem", ".key")) and source not in (".", "secrets")
    ignore = (ROOT / "deploy" / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[[i for i, line in enumerate(ignore) if not line.startswith("#")][0]] == "**"  # deny by default
    assert "**/*.pem" in ignore


def test_image_entrypoints_are_lipcert_commands():
    stages = dockerfile_stages()
    for target, command in (("api", "api"), ("worker", "worker")):
        lines = stages[target]["lines"]
        assert exec_form("ENTRYPOINT", lines) == ["lipcert"]
        ctx = parse_lipcert(exec_form("CMD", lines))
        assert ctx.command.name == command
    (healthcheck,) = [line for line in stages["api"]["lines"] if line.startswith("HEALTHCHECK")]
    assert f"http://127.0.0.1:{API_PORT}/healthz" in healthcheck and "/healthz" in flask_routes()


def test_pinned_requirements_cover_every_import():
    """A package imported at module level by certify/, service/ or worker/ must be pinned for the images."""
    pinned, left_out = {}, set()
    for line in (ROOT / "deploy" / "docker" / "requirements.txt").read_text().splitlines():
        if line.startswith("# not in the images:"):
            left_out.add(canonical(line.split(":", 1)[1].split("(")[0]))
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"not pinned: {line}"
            pinned[canonical(name)] = version
    distributions = metadata.packages_distributions()
    local = {"certify", "service", "worker", "__future__"}
    for package in ("certify", "service", "worker"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top in sys.stdlib_module_names or top in local or top == "torch":
                        continue
                    dists = [canonical(d) for d in distributions.get(top, [top])]
                    assert any(d in pinned for d in dists), f"{path.relative_to(ROOT)} imports {top}: pin {dists}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = canonical(re.match(r"[A-Za-z0-9_.-]+", requirement).group(0))
        assert name == "torch" or name in pinned or name in left_out, \
            f"{name} (a pyproject dependency) is not pinned for the images"
    assert not left_out & set(pinned)


def test_package_data_ships_every_non_python_file():
    """The images install the project as a wheel: templates, static files and schemas must be package data."""
    import fnmatch

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_data = config.get("package-data", {})
    for package in ("certify", "service", "worker"):
        for path in (ROOT / package).rglob("*"):
            if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            relative = path.relative_to(ROOT / package).as_posix()
            patterns = package_data.get(package, []) + package_data.get("*", [])
            assert any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(relative, p.replace("**/", ""))
                       for p in patterns), (f"{package}/{relative} is not in [tool.setuptools.package-data]; e.g. "
                                            'service = ["ui/templates/**/*.html", "ui/static/*"]')


# ------------------------------------------------------------------------------------------------------ GPU claim
def _fake_lipcert(tmp_path: Path) -> Path:
    """A stand-in `lipcert` that records its arguments (written whole, then renamed) and stays alive like a worker."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "lipcert"
    fake.write_text('#!/bin/sh\necho "started $*" > "$FAKE_OUT/.$$"\nmv "$FAKE_OUT/.$$" "$FAKE_OUT/$$.args"\n'
                    "exec sleep 30\n")
    fake.chmod(0o755)
    return bindir


def _eventually(condition, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return result


@pytest.mark.skipif(shutil.which("flock") is None, reason="no flock(1) on this machine")
def test_gpu_worker_script_gives_each_replica_its_own_gpu(tmp_path):
    bindir = _fake_lipcert(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", FAKE_OUT=str(out),
               LIPCERT_GPU_COUNT="2", LIPCERT_GPU_LOCK_DIR=str(tmp_path / "locks"), LIPCERT_GPU_RETRY_S="30")
    script = str(ROOT / "deploy" / "docker" / "gpu-worker.sh")
    procs, logs = [], []

    def replica(*args):
        logs.append(tmp_path / f"replica{len(procs)}.log")
        with open(logs[-1], "w") as log:
            procs.append(subprocess.Popen(["sh", script, *args], env=env, stdout=log, stderr=log,
                                          start_new_session=True))

    def started():
        return sorted(p.read_text().strip() for p in out.glob("*.args"))

    try:
        for n in range(2):
            replica("--loglevel", "INFO")
            _eventually(lambda n=n: len(started()) == n + 1, f"replica {n} to start its worker")
        assert started() == ["started worker --device cuda:0 --loglevel INFO",
                             "started worker --device cuda:1 --loglevel INFO"]
        replica()  # a third replica waits for a GPU instead of sharing one
        _eventually(lambda: "all 2 GPUs are claimed" in logs[2].read_text(), "the third replica to wait")
        assert procs[2].poll() is None and len(started()) == 2
        # The first worker dies: its GPU is free again for the next replica that starts.
        os.killpg(procs[0].pid, 9)
        procs[0].wait(5)
        for p in out.glob("*.args"):
            p.unlink()
        replica()
        assert _eventually(started, "the fourth replica to start") == ["started worker --device cuda:0"]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
            p.wait(5)


def test_gpu_worker_script_refuses_without_a_gpu(tmp_path):
    env = dict(os.environ, LIPCERT_GPU_COUNT="0", LIPCERT_GPU_LOCK_DIR=str(tmp_path / "locks"))
    result = subprocess.run(["sh", str(ROOT / "deploy" / "docker" / "gpu-worker.sh")], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "no CUDA device is visible" in result.stderr


# --------------------------------------------------------------------------------------------------- Kubernetes
def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    built = {s["image"].split(":")[0] for s in load_compose()["services"].values() if "build" in s}
    tags = {i["name"]: i["newTag"] for i in kustomization["images"]}
    assert set(tags) <= built
    for deployment in k8s_kind("Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            # The manifests name the image; the kustomization pins its tag, the CUDA one for the GPU workers.
            assert ":" not in container["image"] and re.fullmatch(r"\d+\.\d+\.\d+(-\w+)?", tags[container["image"]])
    assert tags["lipcert-worker"].endswith("-cuda")


def test_k8s_containers_use_built_images_and_lipcert_commands():
    built = {s["image"].split(":")[0] for s in load_compose()["services"].values() if "build" in s}
    commands = {}
    for deployment in k8s_kind("Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert container["image"] in built, container["image"]
            ctx = parse_lipcert(container["args"])
            commands[deployment["metadata"]["name"]] = ctx
            env = {e["name"] for e in container["env"]}
            assert env <= settings_env_names(), env - settings_env_names()
    assert commands["lipcert-api"].command.name == "api" and commands["lipcert-api"].params["port"] == API_PORT
    assert commands["lipcert-worker"].command.name == "worker"
    assert commands["lipcert-worker"].params["device"] == "cuda:0"


def _container_ports(container) -> dict:
    return {p.get("name"): p["containerPort"] for p in container.get("ports", [])}


def test_k8s_probes_and_services_point_at_real_ports_and_routes():
    routes = flask_routes()
    api = next(d for d in k8s_kind("Deployment") if d["metadata"]["name"] == "lipcert-api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    ports = _container_ports(container)
    assert ports == {"http": API_PORT}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {"/healthz", "/readyz", "/metrics"} <= routes
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == API_PORT and annotations["prometheus.io/path"] in routes
    workloads = {d["metadata"]["name"]: d for d in k8s_kind("Deployment") + k8s_kind("StatefulSet")}
    for service in k8s_kind("Service"):
        selector = service["spec"]["selector"]
        targets = [w for w in workloads.values() if selector.items() <= w["spec"]["template"]["metadata"]["labels"]
                   .items()]
        assert len(targets) == 1, service["metadata"]["name"]
        target_ports = _container_ports(targets[0]["spec"]["template"]["spec"]["containers"][0])
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in target_ports or port["targetPort"] in target_ports.values()


def test_k8s_workers_take_one_gpu_each_and_share_the_artifact_claim():
    worker = next(d for d in k8s_kind("Deployment") if d["metadata"]["name"] == "lipcert-worker")
    spec = worker["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    claims = {p["metadata"]["name"]: p for p in k8s_kind("PersistentVolumeClaim")}
    for deployment in k8s_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        data_dir = next(e["value"] for e in pod["containers"][0]["env"] if e["name"] == "LIPCERT_DATA_DIR")
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == data_dir)
        claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
        assert claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"], deployment["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True


def test_k8s_secrets_are_mounted_files_and_documented():
    docs = (ROOT / "docs" / "deploy.md").read_text()
    for deployment in k8s_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        env = {e["name"]: e.get("value") for e in container["env"]}
        for volume in pod["volumes"]:
            if "secret" in volume:
                name = volume["secret"]["secretName"]
                assert f"kubectl -n lipcert create secret generic {name}" in docs, name
                assert any(v and v.startswith(mounts[volume["name"]] + "/") for v in env.values()), name
    signing = [d for d in k8s_kind("Deployment") if any(v.get("secret", {}).get("secretName") == "lipcert-signing-key"
                                                       for v in d["spec"]["template"]["spec"]["volumes"])]
    assert [d["metadata"]["name"] for d in signing] == ["lipcert-worker"]


def test_keda_scales_the_workers_on_the_job_queue():
    (scaled,) = k8s_kind("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "lipcert-worker"
    assert scaled["spec"]["minReplicaCount"] >= 1  # /readyz needs a live worker
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    worker = next(d for d in k8s_kind("Deployment") if d["metadata"]["name"] == "lipcert-worker")
    env = {e["name"]: e["value"] for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert trigger["metadata"]["listName"] == env["LIPCERT_QUEUE"]
    host = trigger["metadata"]["address"].split(".")[0]
    assert host in {s["metadata"]["name"] for s in k8s_kind("Service")}
    assert env["REDIS_URL"].startswith(f"redis://{host}:6379/")


# --------------------------------------------------------------------------------------------------- Prometheus
def test_prometheus_scrapes_the_api_metrics_route():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS / rule_file).exists()
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["lipcert-api"]["metrics_path"] in flask_routes()
    assert jobs["lipcert-api"]["static_configs"][0]["targets"] == [f"api:{API_PORT}"]


def test_alert_rules_cover_queue_workers_and_failures_with_exported_metrics():
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert {"LipcertQueueGrowing", "LipcertNoWorkerHeartbeat", "LipcertJobFailureRate"} <= names
    exported = set(re.findall(r'"(lipcert_\w+)"', (ROOT / "service" / "metrics.py").read_text()))
    for rule in rules:
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("[") == expr.count("]"), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]) and rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        for metric in re.findall(r"\b(lipcert_\w+)", expr):
            assert metric in exported, f"{rule['alert']}: {metric} is not exported by service/metrics.py"
        states = set(re.findall(r'state="(\w+)"', expr))
        from service.core.records import STATES

        assert states <= set(STATES), states
