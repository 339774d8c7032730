"""Service settings, read once from the environment so that the API, the workers and ``lipcert serve`` agree."""

from __future__ import annotations

import os
from dataclasses import dataclass

from service.core.webhooks import parse_networks


def _int(env: dict, name: str, default: int) -> int:
    value = env.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected an integer") from None


def _float(env: dict, name: str, default: float) -> float:
    value = env.get(name)
    if value in (None, ""):
        return default
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected a number") from None


def _nice(env: dict) -> int:
    value = _int(env, "LIPCERT_WORKER_NICE", Settings.worker_nice)
    if not 0 <= value <= 19:
        raise ValueError(f"LIPCERT_WORKER_NICE={value}: expected a nice value from 0 to 19")
    return value


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    data_dir: str = "lipcert-data"
    tokens: str = ""  # tenant:token[:ro],...
    tokens_file: str | None = None
    signing_key: str | None = None  # private key PEM path (workers); the API only needs its public half
    public_keys: tuple[str, ...] = ()  # extra public key PEM paths published at /v1/keys (key rotation)
    max_model_bytes: int = 256 * 1024**2
    max_dataset_bytes: int = 256 * 1024**2
    max_property_bytes: int = 16 * 1024**2  # an uploaded .vnnlib file (parsed whole at upload)
    upload_checks: int = 1  # concurrent upload checks per API process (each holds a few times the file in memory)
    rate_limit_per_s: int = 200  # requests per tenant per second
    job_quota: int = 50  # queued + running jobs per tenant
    max_job_seconds: float = 3600.0  # cap on a job's time budget (soft limit); the hard limit adds a grace period
    hard_limit_grace_s: float = 30.0
    visibility_timeout_s: int = 120  # a message whose worker stopped heart-beating is delivered again after this
    worker_heartbeat_s: float = 2.0
    max_attempts: int = 3  # runs of a job whose worker died; then it fails with worker_lost
    job_memory_mb: int = 0  # memory a job may take beyond what its worker holds (0: 3/4 of the machine's)
    worker_nice: int = 10  # workers' CPU priority below the API's (0 = the same); see worker/priority.py
    queue: str = "lipcert"
    webhook_allow_nets: tuple = ()  # internal networks a webhook may target (see service/core/webhooks.py)

    @property
    def store_dir(self) -> str:
        return os.path.join(self.data_dir, "store")

    @classmethod
    def from_env(cls, env: dict | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        public = tuple(p for p in env.get("LIPCERT_PUBLIC_KEYS", "").split(os.pathsep) if p)
        return cls(
            redis_url=env.get("REDIS_URL") or cls.redis_url,
            data_dir=os.path.abspath(env.get("LIPCERT_DATA_DIR") or cls.data_dir),
            tokens=env.get("LIPCERT_TOKENS", ""),
            tokens_file=env.get("LIPCERT_TOKENS_FILE") or None,
            signing_key=env.get("LIPCERT_SIGNING_KEY") or None,
            public_keys=public,
            max_model_bytes=_int(env, "LIPCERT_MAX_MODEL_BYTES", cls.max_model_bytes),
            max_dataset_bytes=_int(env, "LIPCERT_MAX_DATASET_BYTES", cls.max_dataset_bytes),
            max_property_bytes=_int(env, "LIPCERT_MAX_PROPERTY_BYTES", cls.max_property_bytes),
            upload_checks=max(1, _int(env, "LIPCERT_UPLOAD_CHECKS", cls.upload_checks)),
            rate_limit_per_s=_int(env, "LIPCERT_RATE_LIMIT", cls.rate_limit_per_s),
            job_quota=_int(env, "LIPCERT_JOB_QUOTA", cls.job_quota),
            max_job_seconds=_float(env, "LIPCERT_MAX_JOB_SECONDS", cls.max_job_seconds),
            hard_limit_grace_s=_float(env, "LIPCERT_HARD_LIMIT_GRACE_S", cls.hard_limit_grace_s),
            visibility_timeout_s=_int(env, "LIPCERT_VISIBILITY_TIMEOUT", cls.visibility_timeout_s),
            worker_heartbeat_s=_float(env, "LIPCERT_WORKER_HEARTBEAT_S", cls.worker_heartbeat_s),
            max_attempts=_int(env, "LIPCERT_MAX_ATTEMPTS", cls.max_attempts),
            job_memory_mb=_int(env, "LIPCERT_JOB_MEMORY_MB", cls.job_memory_mb),
            worker_nice=_nice(env),
            queue=env.get("LIPCERT_QUEUE") or cls.queue,
            webhook_allow_nets=parse_networks(env.get("LIPCERT_WEBHOOK_ALLOW_NETS", "")),
        )
