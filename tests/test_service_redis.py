"""The embedded Redis on a shared machine: a password, no CONFIG/DEBUG/MODULE, private files."""

from __future__ import annotations

import os
import stat

import pytest
import redis

from service.runner import EmbeddedRedis


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    data = tmp_path_factory.mktemp("locked") / "redis"
    server = EmbeddedRedis(str(data)).start()
    try:
        yield server
    finally:
        server.stop()


def test_a_client_without_the_password_is_refused(embedded):
    anonymous = redis.Redis(host=embedded.host, port=embedded.port, socket_timeout=2)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.set("lipcert:t:alice:models:x", "overwritten")
    wrong = redis.Redis(host=embedded.host, port=embedded.port, password="guess", socket_timeout=2)
    with pytest.raises(redis.exceptions.AuthenticationError):
        wrong.ping()


@pytest.mark.parametrize("command", [("CONFIG", "SET", "dir", "/tmp"), ("CONFIG", "GET", "requirepass"),
                                     ("DEBUG", "SLEEP", "0"), ("MODULE", "LOAD", "/tmp/x.so"),
                                     ("REPLICAOF", "127.0.0.1", "9"), ("ACL", "SETUSER", "x", "on")])
def test_dangerous_commands_are_gone_even_with_the_password(embedded, command):
    client = redis.Redis.from_url(embedded.url, socket_timeout=2)
    with pytest.raises(redis.exceptions.ResponseError, match="unknown command"):
        client.execute_command(*command)
    assert client.ping()


def test_the_password_is_not_on_the_command_line(embedded):
    with open(f"/proc/{embedded.proc.pid}/cmdline", "rb") as f:
        assert embedded.password.encode() not in f.read()


def test_data_dir_is_private_and_so_is_every_file(tmp_path):
    data = tmp_path / "redis"
    data.mkdir(mode=0o755)
    (data / "appendonly.aof").write_text("")  # left world-readable by an older version
    os.chmod(data / "appendonly.aof", 0o644)
    server = EmbeddedRedis(str(data)).start()
    try:
        redis.Redis.from_url(server.url).set("k", "v")
        password = server.password
    finally:
        server.stop()  # SIGTERM: the snapshot and the append-only file are flushed
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    files = sorted(os.listdir(data))
    assert {"appendonly.aof", "dump.rdb", "password", "redis.conf", "redis.log"} <= set(files)
    assert {f: oct(stat.S_IMODE(os.stat(data / f).st_mode)) for f in files} == {f: "0o600" for f in files}
    again = EmbeddedRedis(str(data)).start()  # a restart keeps the password (connected clients go on)
    try:
        assert again.password == password and redis.Redis.from_url(again.url).get("k") == b"v"
    finally:
        again.stop()


def test_job_pages_read_only_their_own_ids_and_end_where_the_jobs_do(embedded):
    """An unfiltered page fetches its ids and one more (not every job of the tenant); a job whose record is gone
    is skipped without ending the listing early; filtered listings page the same way."""
    from service.core.records import QUEUED, Records, connect

    records = Records(connect(embedded.url))
    ids = [f"job_page{i}" for i in range(5)]
    for i, job_id in enumerate(ids):
        records.create_job({"id": job_id, "tenant": "pager", "state": QUEUED, "model": "m", "created_at": 100.0 + i})
    newest_first = ids[::-1]
    pages, offset = [], 0
    while offset is not None:
        jobs, offset = records.list_jobs("pager", None, None, offset, 2)
        pages.append([j["id"] for j in jobs])
    assert pages == [newest_first[:2], newest_first[2:4], newest_first[4:]]
    records.r.delete(records.job_key(ids[2]))  # the record of the third newest is gone
    jobs, offset = records.list_jobs("pager", None, None, 0, 3)
    assert [j["id"] for j in jobs] == [ids[4], ids[3], ids[1]] and offset is not None
    assert [j["id"] for j in records.list_jobs("pager", None, None, offset, 3)[0]] == [ids[0]]
    filtered = records.list_jobs("pager", QUEUED, "m", 0, 10)
    assert [j["id"] for j in filtered[0]] == [ids[4], ids[3], ids[1], ids[0]] and filtered[1] is None


def test_the_job_queue_warms_up_and_sends_without_a_result_subscription(embedded, tmp_path):
    """warm() does the first send's set-up ahead of time; a job message asks for no result (nobody reads Celery's
    results: job state lives in the record), so sending it subscribes to nothing."""
    import json

    from service.app import celery_queue
    from service.core.settings import Settings

    queue = celery_queue(Settings(redis_url=embedded.url, data_dir=str(tmp_path), queue="warm-test"))
    queue.warm()
    client = redis.Redis.from_url(embedded.url)
    before = client.info("stats")["total_commands_processed"]
    queue.submit("job_warm", 10.0)
    sent = client.info("stats")["total_commands_processed"] - before - 1  # less the second INFO
    message = json.loads(client.lpop("warm-test"))
    assert message["headers"]["id"] == "job_warm" and message["headers"]["ignore_result"] is True
    assert client.pubsub_numpat() == 0 and client.pubsub_channels() == []
    assert sent == 1  # LPUSH, nothing else


def test_concurrent_creations_never_exceed_the_quota(embedded):
    """The quota check and the creation are one script: 40 threads racing for 5 slots get exactly 5."""
    import threading

    from service.core.records import QUEUED, Records, connect

    records = Records(connect(embedded.url))
    barrier, results = threading.Barrier(40), []

    def create(i: int) -> None:
        job = {"id": f"job_race{i}", "tenant": "racer", "state": QUEUED, "model": "m", "created_at": 100.0 + i}
        barrier.wait()
        results.append(records.create_job(job, quota=5))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 5 and records.active_jobs("racer") == 5
    assert len(records.list_jobs("racer", None, None, 0, 100)[0]) == 5  # the refused ones left nothing behind


def test_filtered_listings_follow_every_state_change_and_deletion(embedded):
    """Each (state, model) listing equals the filter applied to all of the tenant's jobs, after creations, state
    changes and a discarded job; and a filtered page reads only its own records, however many jobs match no
    filter."""
    from service.core.records import CANCELLED, FAILED, QUEUED, RUNNING, STATES, SUCCEEDED, Records, connect

    records = Records(connect(embedded.url))
    jobs = [{"id": f"job_idx{i}", "tenant": "indexed", "state": QUEUED, "model": f"m{i % 2}",
             "created_at": 200.0 + i} for i in range(12)]
    for job in jobs:
        assert records.create_job(job)
    moves = [(0, [QUEUED], RUNNING), (0, [RUNNING], SUCCEEDED), (1, [QUEUED], CANCELLED), (2, [QUEUED], RUNNING),
             (3, [QUEUED], RUNNING), (3, [RUNNING], FAILED), (4, [RUNNING], FAILED)]  # the last is refused
    for i, allowed, new in moves:
        records.transition(jobs[i], allowed, new)
    records.discard_job(records.get_job(jobs[5]["id"]))

    def listed(state, model, limit=4):
        out, offset = [], 0
        while offset is not None:
            page, offset = records.list_jobs("indexed", state, model, offset, limit)
            out += [j["id"] for j in page]
        return out

    truth = {j["id"]: records.get_job(j["id"]) for j in jobs}
    assert truth[jobs[5]["id"]] is None and truth[jobs[4]["id"]]["state"] == QUEUED
    for state in (None, *STATES):
        for model in (None, "m0", "m1"):
            expected = [i for i, j in sorted(truth.items(), key=lambda kv: -int(kv[0][7:])) if j is not None
                        and (state is None or j["state"] == state) and (model is None or j["model"] == model)]
            assert listed(state, model) == expected, (state, model)

    for i in range(300):  # jobs no filtered page below may read
        records.create_job({"id": f"job_idx_other{i}", "tenant": "indexed", "state": QUEUED, "model": "m2",
                            "created_at": 100.0 + i})
    client = redis.Redis.from_url(embedded.url)
    before = client.info("stats")["total_commands_processed"]
    page, _ = records.list_jobs("indexed", RUNNING, "m0", 0, 50)
    commands = client.info("stats")["total_commands_processed"] - before - 1  # less the second INFO
    assert [j["id"] for j in page] == [jobs[2]["id"]] and commands <= 3  # ZREVRANGE, one HGETALL (pipelined)


def test_jobs_recorded_before_the_indexes_are_indexed_once(embedded):
    import json

    from service.core.records import INDEXED, RUNNING, Records, connect

    records = Records(connect(embedded.url))
    old = {"id": "job_old", "tenant": "veteran", "state": RUNNING, "model": "m", "created_at": 50.0}
    records.r.hset(records.job_key("job_old"), mapping={k: json.dumps(v) for k, v in old.items()})
    records.r.zadd(records._t("veteran", "jobs"), {"job_old": 50.0})  # what an earlier version wrote
    assert records.list_jobs("veteran", RUNNING, None, 0, 10)[0] == []
    assert records.index_existing_jobs() >= 1 and records.r.exists(INDEXED)
    for state, model in ((RUNNING, None), (None, "m"), (RUNNING, "m")):
        assert [j["id"] for j in records.list_jobs("veteran", state, model, 0, 10)[0]] == ["job_old"]
    assert records.index_existing_jobs() == 0  # once per store


def test_polling_a_job_is_rate_limited_in_its_single_round_trip(embedded, tmp_path):
    """GET /v1/jobs/{id} counts itself against the rate limit in the same Redis round trip that reads the job:
    over the limit it is 429 like every other route, and another tenant's job stays a 404."""
    from service.app import create_app
    from service.core.records import QUEUED, Records, connect
    from service.core.settings import Settings
    from service.core.signing import ensure_signing_key

    records = Records(connect(embedded.url))
    records.create_job({"id": "job_polled", "tenant": "poller", "state": QUEUED, "model": "m", "created_at": 1.0})
    settings = Settings(redis_url=embedded.url, data_dir=str(tmp_path), rate_limit_per_s=3,
                        tokens="poller:poller-token-0123456789,other:other-token-0123456789")
    ensure_signing_key(settings)
    client = create_app(settings, queue=object()).test_client()
    other = client.get("/v1/jobs/job_polled", headers={"Authorization": "Bearer other-token-0123456789"})
    assert other.status_code == 404
    codes = []
    for _ in range(10):
        r = client.get("/v1/jobs/job_polled", headers={"Authorization": "Bearer poller-token-0123456789"})
        codes.append(r.status_code)
        if r.status_code == 200:
            assert r.json["id"] == "job_polled" and "tenant" not in r.json
    assert codes[0] == 200 and codes.count(200) <= 6  # 3 a second: the window may roll once during the loop
