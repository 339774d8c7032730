"""Prometheus metrics, read from Redis at scrape time so every API and worker process is counted once."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily


class RedisCollector:
    def __init__(self, records, queue: str):
        self.records, self.queue = records, queue

    def collect(self):
        snap = self.records.metrics_snapshot(self.queue)
        jobs = GaugeMetricFamily("lipcert_jobs", "Jobs by state", labels=["state"])
        for state, n in snap["jobs"].items():
            jobs.add_metric([state], n)
        yield jobs
        yield GaugeMetricFamily("lipcert_queue_depth", "Messages waiting in the job queue", value=snap["queue_depth"])
        uploads = CounterMetricFamily("lipcert_upload_bytes", "Bytes received by uploads", labels=["kind"])
        for kind, n in snap["upload_bytes"].items():
            uploads.add_metric([kind], n)
        yield uploads
        stages = SummaryMetricFamily("lipcert_stage_seconds", "Time spent in each pipeline stage", labels=["stage"])
        for stage, total in snap["stage_sum"].items():
            stages.add_metric([stage], count_value=snap["stage_count"].get(stage, 0), sum_value=total)
        yield stages


def render_metrics(records, queue: str) -> bytes:
    registry = CollectorRegistry()
    registry.register(RedisCollector(records, queue))
    return generate_latest(registry)
