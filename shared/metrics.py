"""Every Prometheus metric of the API and the worker, defined here (names as on the Grafana dashboard).

The API serves them at `/metrics`, each worker on WORKER_METRICS_PORT. With several uvicorn workers, set
PROMETHEUS_MULTIPROC_DIR (an empty folder they share) and `/metrics` adds up all processes.
"""

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

HTTP_REQUESTS = Counter(
    "notify_http_requests", "HTTP requests by route, method and status", ["route", "method", "status"]
)
ACCEPTED = Counter("notify_notifications_accepted", "Notifications accepted (answered 201)")
BACKLOG = Gauge("notify_backlog_entries", "Stream entries (requests) not yet stored", multiprocess_mode="max")
BACKLOG_BY_SHARD = Gauge(
    "notify_backlog_entries_by_shard",
    "Stream entries (requests) not yet stored, per shard of STREAM_SHARDS",
    ["shard"],
    multiprocess_mode="max",
)
OLDEST_PENDING_AGE = Gauge(
    "notify_oldest_pending_age_seconds", "Age of the oldest entry not yet stored", multiprocess_mode="max"
)
ROWS_STORED = Counter("notify_rows_stored", "Notifications newly stored in Postgres")
DRAIN_BATCH_SIZE = Histogram(
    "notify_drain_batch_notifications",
    "Notifications per drained batch",
    buckets=(1, 10, 100, 1_000, 10_000, 50_000, 100_000, 500_000),
)
DRAIN_BATCH_SECONDS = Histogram(
    "notify_drain_batch_seconds",
    "Time to store and acknowledge one batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STORAGE_ERRORS = Counter("notify_storage_errors", "Failed attempts to store a batch (retried)")
PARTITIONS_DROPPED = Counter("notify_partitions_dropped", "Day partitions of notifications dropped by retention")
DEAD_LETTERS = Counter("notify_dead_letters", "Entries moved to the dead-letter stream")


def render() -> tuple[bytes, str]:
    """Return the exposition of this process's metrics (of all processes in multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
