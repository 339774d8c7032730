"""The cost of one GET /v1/jobs/{id} inside an API process, apart from the network and the load generator.

Builds the app in-process against an embedded Redis and polls one job with Flask's test client: prints per request
the wall time (p50/p99), the CPU time of this process, and the Redis commands and round trips it takes. CPU time
and round trips hardly depend on how loaded the machine is, so they compare versions where ``bench_api.py``'s
end-to-end percentiles, on a shared machine, mostly measure the scheduler.

    python benchmarks/bench_api_get.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

TOKEN = "bench-token-0123456789abcdef"


class _NoQueue:
    def submit(self, job_id: str, budget: float) -> None:
        pass


def _count_round_trips() -> list[int]:
    """Count the commands (or pipelines) redis-py sends: one send, one round trip."""
    import redis.connection

    sent, original = [0], redis.connection.Connection.send_packed_command

    def counted(self, command, check_health=True):
        sent[0] += 1
        return original(self, command, check_health)

    redis.connection.Connection.send_packed_command = counted
    return sent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    args = ap.parse_args()
    from service.app import create_app
    from service.core.settings import Settings
    from service.core.signing import ensure_signing_key
    from service.runner import EmbeddedRedis

    with tempfile.TemporaryDirectory(prefix="lipcert-bench-") as data_dir:
        server = EmbeddedRedis(os.path.join(data_dir, "redis")).start()
        try:
            settings = Settings(redis_url=server.url, data_dir=data_dir, tokens=f"bench:{TOKEN}",
                                rate_limit_per_s=10**9)
            ensure_signing_key(settings)
            app = create_app(settings, queue=_NoQueue())
            client, auth = app.test_client(), {"Authorization": f"Bearer {TOKEN}"}
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            with open(os.path.join(root, "examples", "digits_mlp.onnx"), "rb") as f:
                model = client.post("/v1/models", data=f.read(),
                                    headers={**auth, "Content-Type": "application/octet-stream"}).json["id"]
            job = client.post("/v1/jobs", json={"model": model, "samples": 2, "attacks": "none"}, headers=auth)
            path = f"/v1/jobs/{job.json['id']}"
            for _ in range(200):  # warm-up
                client.get(path, headers=auth)
            records = app.extensions["lipcert"].records
            commands, sent = records.r.info("stats")["total_commands_processed"], _count_round_trips()
            walls, cpu0 = [], time.process_time()
            for _ in range(args.requests):
                t0 = time.perf_counter()
                assert client.get(path, headers=auth).status_code == 200
                walls.append((time.perf_counter() - t0) * 1000)
            cpu = (time.process_time() - cpu0) / args.requests * 1000
            trips = sent[0] / args.requests
            per_request = (records.r.info("stats")["total_commands_processed"] - commands - 1) / args.requests
            walls.sort()
            print(f"GET {path[:12]}... x {args.requests}, in-process, load average {os.getloadavg()[0]:.1f}")
            print(f"{'wall p50 ms':>12} {'wall p99 ms':>12} {'CPU ms':>8} {'Redis commands':>15} {'round trips':>12}")
            print(f"{statistics.median(walls):>12.2f} {walls[int(0.99 * (len(walls) - 1))]:>12.2f} {cpu:>8.2f} "
                  f"{per_request:>15.1f} {trips:>12.1f}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
