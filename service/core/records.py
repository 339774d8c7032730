"""Records in Redis: models, datasets, jobs (with their state machine), latest reports, counters, heartbeats.

Shared by the API and the workers; no Flask here. A job is a Redis hash whose values are JSON; every state change
goes through one Lua script that checks the current state, so two processes can never both move a job (e.g. a
cancel racing a completion). The script also keeps the per-state sets (metrics), the per-tenant set of active
jobs (quota) and the per-tenant listing indexes (sorted sets by creation time: all jobs, per state, per model, per
model and state, so a filtered page reads only its own records) in step with the job hash. Creating a job is one
script too, which checks the tenant's quota and writes the job, so concurrent creations never exceed the quota.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid

import redis

PREFIX = "lipcert:"
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)

_INDEX = """
local function index(t, id, created, model, old, new)
  for _, key in ipairs({t .. 'jobs:state:', t .. 'jobs:model:' .. model .. ':state:'}) do
    if old then redis.call('ZREM', key .. old, id) end
    if new then redis.call('ZADD', key .. new, created, id) end
  end
end
"""

# KEYS: job hash, prefix of the tenant keys. ARGV: job id. Index a job recorded before the listing indexes existed.
_REINDEX = _INDEX + """
local f = redis.call('HMGET', KEYS[1], 'state', 'model', 'created_at')
if not f[1] or not f[2] or not f[3] then return 0 end
local model = cjson.decode(f[2])
redis.call('ZADD', KEYS[2] .. 'jobs:model:' .. model, tonumber(f[3]), ARGV[1])
index(KEYS[2], ARGV[1], tonumber(f[3]), model, nil, cjson.decode(f[1]))
return 1
"""
INDEXED = PREFIX + "job-indexes:v1"  # set once every job recorded before the indexes existed is in them

# KEYS: job hash, tenant prefix, global state-set prefix. ARGV: job id, quota, created_at, state, model, fields...
_CREATE = _INDEX + """
local quota = tonumber(ARGV[2])
if quota >= 0 and redis.call('SCARD', KEYS[2] .. 'active') >= quota then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('ZADD', KEYS[2] .. 'jobs', ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[2] .. 'jobs:model:' .. ARGV[5], ARGV[3], ARGV[1])
redis.call('SADD', KEYS[2] .. 'active', ARGV[1])
redis.call('SADD', KEYS[3] .. ARGV[4], ARGV[1])
index(KEYS[2], ARGV[1], ARGV[3], ARGV[5], nil, ARGV[4])
return 1
"""

# KEYS: job hash, tenant prefix, global state-set prefix. ARGV: allowed states (JSON), new state, job id, fields...
_TRANSITION = _INDEX + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
local allowed = cjson.decode(ARGV[1])
for _, s in ipairs(allowed) do
  if s == state then
    local old = cjson.decode(state)
    local new = ARGV[2]
    redis.call('HSET', KEYS[1], 'state', cjson.encode(new), unpack(ARGV, 4))
    redis.call('SREM', KEYS[3] .. old, ARGV[3])
    redis.call('SADD', KEYS[3] .. new, ARGV[3])
    local f = redis.call('HMGET', KEYS[1], 'created_at', 'model')
    if f[1] and f[2] then index(KEYS[2], ARGV[3], tonumber(f[1]), cjson.decode(f[2]), old, new) end
    if new == 'succeeded' or new == 'failed' or new == 'cancelled' then
      redis.call('SREM', KEYS[2] .. 'active', ARGV[3])
    end
    return 1
  end
end
return 0
"""


def now() -> float:
    return round(time.time(), 3)


def connect(url: str) -> redis.Redis:
    """A client that fails fast when Redis is away (requests answer 503 instead of hanging)."""
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=10,
                                decode_responses=True)


def _encode(fields: dict) -> dict:
    return {k: json.dumps(v) for k, v in fields.items()}


def _decode(raw: dict) -> dict:
    return {k: json.loads(v) for k, v in raw.items()}


def new_job_id() -> str:
    return "job_" + uuid.uuid4().hex


class Records:
    def __init__(self, client: redis.Redis):
        self.r = client
        self._transition = client.register_script(_TRANSITION)
        self._create = client.register_script(_CREATE)
        self._reindex = client.register_script(_REINDEX)

    # -- keys
    @staticmethod
    def _t(tenant: str, *parts: str) -> str:
        return PREFIX + "t:" + tenant + ":" + ":".join(parts)

    @staticmethod
    def job_key(job_id: str) -> str:
        return PREFIX + "job:" + job_id

    # -- models and datasets (records per tenant; the bytes are shared in the store)
    def put_artifact(self, tenant: str, kind: str, record: dict) -> bool:
        """Save a model/dataset/property record (and list it); False when the tenant already had it (same id)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self._t(tenant, kind, record["id"]), json.dumps(record), nx=True)
        pipe.zadd(self._t(tenant, kind), {record["id"]: time.time()}, nx=True)
        return bool(pipe.execute()[0])

    def get_artifact(self, tenant: str, kind: str, digest: str) -> dict | None:
        raw = self.r.get(self._t(tenant, kind, digest))
        return json.loads(raw) if raw else None

    def list_artifacts(self, tenant: str, kind: str, offset: int, limit: int) -> tuple[list[dict], int | None]:
        """(records, next offset or None), newest first; reads only the page's ids and records."""
        ids = self.r.zrevrange(self._t(tenant, kind), offset, offset + limit)  # one more: is there a next page?
        page = ids[:limit]
        raws = self.r.mget([self._t(tenant, kind, i) for i in page]) if page else []
        return [json.loads(raw) for raw in raws if raw], (offset + limit if len(ids) > limit else None)

    def delete_artifact(self, tenant: str, kind: str, digest: str) -> bool:
        """Forget the tenant's record (the bytes stay: other tenants and queued jobs may hold the same digest)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self._t(tenant, kind, digest))
        pipe.zrem(self._t(tenant, kind), digest)
        return bool(pipe.execute()[0])

    # -- jobs
    def create_job(self, job: dict, quota: int | None = None) -> bool:
        """Record a new job, unless its tenant already has ``quota`` queued or running ones (then False)."""
        flat = [x for kv in _encode(job).items() for x in kv]
        keys = [self.job_key(job["id"]), self._t(job["tenant"], ""), PREFIX + "state:"]
        args = [job["id"], -1 if quota is None else quota, job["created_at"], job["state"], job["model"], *flat]
        return self._create(keys=keys, args=args) == 1

    def get_job(self, job_id: str) -> dict | None:
        raw = self.r.hgetall(self.job_key(job_id))
        return _decode(raw) if raw else None

    def tenant_job(self, tenant: str, job_id: str) -> dict | None:
        """The job when it belongs to ``tenant``; None otherwise (others' jobs look missing)."""
        job = self.get_job(job_id) if job_id.startswith("job_") else None
        return job if job and job.get("tenant") == tenant else None

    def transition(self, job: dict, from_states, to_state: str, **fields) -> bool:
        """Move ``job`` to ``to_state`` when it is in one of ``from_states``; also sets ``fields``."""
        fields["updated_at"] = now()
        flat = [x for kv in _encode(fields).items() for x in kv]
        allowed = json.dumps([json.dumps(s) for s in from_states])
        keys = [self.job_key(job["id"]), self._t(job["tenant"], ""), PREFIX + "state:"]
        return self._transition(keys=keys, args=[allowed, to_state, job["id"], *flat]) == 1

    def update_job(self, job_id: str, **fields) -> None:
        """Fields that do not change the state (progress, stage, ETA)."""
        fields["updated_at"] = now()
        self.r.hset(self.job_key(job_id), mapping=_encode(fields))

    def request_cancel(self, job_id: str) -> None:
        self.r.hset(self.job_key(job_id), "cancel_requested", "true")

    def cancel_requested(self, job_id: str) -> bool:
        return self.r.hget(self.job_key(job_id), "cancel_requested") == "true"

    def index_existing_jobs(self) -> int:
        """Put the jobs of a store written before the listing indexes existed into them (once per store; each job
        in one script, so a job that changes state meanwhile is indexed under its state). Returns how many."""
        if self.r.exists(INDEXED):
            return 0
        n = 0
        for key in self.r.scan_iter(match=PREFIX + "t:*:jobs", count=500, _type="zset"):
            prefix = key[:-len("jobs")]
            for job_id, _ in self.r.zscan_iter(key, count=500):
                n += self._reindex(keys=[self.job_key(job_id), prefix], args=[job_id])
        self.r.set(INDEXED, "1")
        return n

    def _job_index(self, tenant: str, state: str | None, model: str | None) -> str:
        return self._t(tenant, "jobs") + (f":model:{model}" if model else "") + (f":state:{state}" if state else "")

    def list_jobs(self, tenant: str, state: str | None, model: str | None, offset: int, limit: int):
        """(jobs, next offset or None), newest first, filtered by state and model: one index holds exactly the
        matching ids, so a page reads its own ids (and one more) and their records, whatever the filter. An id whose
        record is gone, or whose job moved to another state since the index was read, is skipped."""
        index, out, position = self._job_index(tenant, state, model), [], offset
        while len(out) < limit:
            want = limit - len(out)
            ids = self.r.zrevrange(index, position, position + want)  # one more: is there a next page?
            pipe = self.r.pipeline(transaction=False)
            for job_id in ids[:want]:
                pipe.hgetall(self.job_key(job_id))
            found = [_decode(raw) for raw in pipe.execute() if raw] if ids else []
            out += [j for j in found if state is None or j["state"] == state]
            position += min(len(ids), want)
            if len(ids) <= want:
                return out, None
        return out, position

    def active_jobs(self, tenant: str) -> int:
        return self.r.scard(self._t(tenant, "active"))

    def _idem(self, tenant: str, key: str) -> str:
        return self._t(tenant, "idem", hashlib.sha256(key.encode()).hexdigest())

    def claim_idempotency_key(self, tenant: str, key: str, job_id: str, fingerprint: str = "",
                              ttl_s: int = 86400) -> tuple[str, str]:
        """(job id, request fingerprint) stored for this key: ``job_id`` when this call claimed it, else the
        earlier request's (whose fingerprint tells whether it had the same body)."""
        name = self._idem(tenant, key)
        value = f"{job_id} {fingerprint}"
        if self.r.set(name, value, nx=True, ex=ttl_s):
            return job_id, fingerprint
        stored = (self.r.get(name) or value).split(" ", 1)
        return stored[0], stored[1] if len(stored) > 1 else fingerprint

    def release_idempotency_key(self, tenant: str, key: str, job_id: str) -> None:
        """Forget a claim whose job was never created, so a retry can create it."""
        name = self._idem(tenant, key)
        if (self.r.get(name) or "").split(" ", 1)[0] == job_id:
            self.r.delete(name)

    def discard_job(self, job: dict) -> None:
        """Remove a job that could not be queued (its creation is undone, so nothing waits for it)."""
        job_id, state = job["id"], job["state"]
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self.job_key(job_id))
        for key in (self._job_index(job["tenant"], None, None), self._job_index(job["tenant"], state, None),
                    self._job_index(job["tenant"], None, job["model"]),
                    self._job_index(job["tenant"], state, job["model"])):
            pipe.zrem(key, job_id)
        pipe.srem(self._t(job["tenant"], "active"), job_id)
        pipe.srem(PREFIX + "state:" + state, job_id)
        pipe.execute()

    # -- leases: one running attempt per job
    def take_lease(self, job_id: str, holder: str, ttl_s: float) -> bool:
        key = PREFIX + "lease:" + job_id
        if self.r.set(key, holder, nx=True, px=int(ttl_s * 1000)):
            return True
        return self.r.get(key) == holder

    def renew_lease(self, job_id: str, holder: str, ttl_s: float) -> None:
        key = PREFIX + "lease:" + job_id
        if self.r.get(key) in (holder, None):
            self.r.set(key, holder, px=int(ttl_s * 1000))

    def release_lease(self, job_id: str, holder: str) -> None:
        key = PREFIX + "lease:" + job_id
        if self.r.get(key) == holder:
            self.r.delete(key)

    # -- reports
    def set_latest_report(self, tenant: str, model: str, job_id: str) -> None:
        self.r.set(self._t(tenant, "report", model), job_id)

    def latest_report_job(self, tenant: str, model: str) -> str | None:
        return self.r.get(self._t(tenant, "report", model))

    # -- rate limiting: a fixed one-second window per tenant
    def _count_request(self, pipe, tenant: str) -> None:
        key = self._t(tenant, "rl", str(int(time.time())))
        pipe.incr(key)
        pipe.expire(key, 2)

    def allow_request(self, tenant: str, per_second: int) -> bool:
        pipe = self.r.pipeline(transaction=False)
        self._count_request(pipe, tenant)
        count, _ = pipe.execute()
        return count <= per_second

    def allow_and_get_job(self, tenant: str, per_second: int, job_id: str) -> tuple[bool, dict | None]:
        """:meth:`allow_request` and :meth:`tenant_job` in one round trip: what a polling client costs."""
        pipe = self.r.pipeline(transaction=False)
        self._count_request(pipe, tenant)
        if job_id.startswith("job_"):
            pipe.hgetall(self.job_key(job_id))
        count, _, *raw = pipe.execute()
        job = _decode(raw[0]) if raw and raw[0] else None
        return count <= per_second, job if job and job.get("tenant") == tenant else None

    # -- metrics counters and worker heartbeats
    def add_upload_bytes(self, kind: str, n: int) -> None:
        self.r.hincrby(PREFIX + "metrics:upload_bytes", kind, n)

    def add_stage_seconds(self, stages: list[dict]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for s in stages:
            if s.get("status") == "done":
                pipe.hincrbyfloat(PREFIX + "metrics:stage_seconds_sum", s["stage"], float(s["seconds"]))
                pipe.hincrby(PREFIX + "metrics:stage_seconds_count", s["stage"], 1)
        pipe.execute()

    def metrics_snapshot(self, queue: str) -> dict:
        pipe = self.r.pipeline(transaction=False)
        for state in STATES:
            pipe.scard(PREFIX + "state:" + state)
        pipe.hgetall(PREFIX + "metrics:upload_bytes")
        pipe.hgetall(PREFIX + "metrics:stage_seconds_sum")
        pipe.hgetall(PREFIX + "metrics:stage_seconds_count")
        for name in queue_lists(queue):
            pipe.llen(name)
        out = pipe.execute()
        n = len(STATES)
        return {
            "jobs": dict(zip(STATES, out[:n])),
            "upload_bytes": {k: int(v) for k, v in out[n].items()},
            "stage_sum": {k: float(v) for k, v in out[n + 1].items()},
            "stage_count": {k: int(v) for k, v in out[n + 2].items()},
            "queue_depth": sum(out[n + 3:]),
        }

    def worker_heartbeat(self, name: str, device: str = "cpu") -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.zadd(PREFIX + "workers", {name: time.time()})
        pipe.hset(PREFIX + "worker_devices", name, device)
        pipe.execute()

    def worker_gone(self, name: str) -> None:
        self.r.zrem(PREFIX + "workers", name)
        self.r.hdel(PREFIX + "worker_devices", name)

    def live_devices(self, within_s: float) -> set[str]:
        """The devices (cpu, cuda:N) of the workers that sent a heartbeat in the last ``within_s`` seconds."""
        names = self.r.zrangebyscore(PREFIX + "workers", time.time() - within_s, "+inf")
        return set(filter(None, self.r.hmget(PREFIX + "worker_devices", names))) if names else set()

    def live_workers(self, within_s: float) -> int:
        return self.r.zcount(PREFIX + "workers", time.time() - within_s, "+inf")


def queue_lists(queue: str) -> list[str]:
    """The Redis lists kombu keeps for a queue (one per priority step)."""
    return [queue] + [f"{queue}\x06\x16{p}" for p in (3, 6, 9)]
