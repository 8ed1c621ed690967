"""Prometheus metrics of the API service (prometheus-client).

With several uvicorn workers the CLI sets ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics``
aggregates every worker's samples; with one worker the default registry is served.
Labels never carry a key or a path: key ids only, route templates only.
"""

from __future__ import annotations

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

__all__ = [
    "REQUESTS",
    "REQUEST_SECONDS",
    "UPLOADS",
    "UPLOADED_BYTES",
    "DEDUP_BYTES",
    "ANNOUNCED_FILES",
    "RATE_LIMITED",
    "BACKEND_SECONDS",
    "SHED",
    "SESSIONS",
    "SESSION_CHUNKS",
    "SESSION_RECEIVED_BYTES",
    "SESSION_HELD_BYTES",
    "SESSION_CHUNKS_IN_PROGRESS",
    "render",
]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter("putplace_http_requests_total", "HTTP requests served", ["method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "putplace_http_request_duration_seconds", "HTTP request latency", ["method", "route"], buckets=_LATENCY_BUCKETS
)
UPLOADS = Counter("putplace_uploads_total", "Content uploads by outcome", ["outcome"])
UPLOADED_BYTES = Counter("putplace_uploaded_bytes_total", "Content bytes written to storage")
DEDUP_BYTES = Counter(
    "putplace_deduplicated_bytes_total", "Bytes announced whose content was already stored (not uploaded again)"
)
ANNOUNCED_FILES = Counter("putplace_files_announced_total", "File records received", ["upload_required"])
RATE_LIMITED = Counter("putplace_rate_limited_total", "Requests refused with 429", ["key_id"])
BACKEND_SECONDS = Histogram(
    "putplace_backend_operation_duration_seconds",
    "Database and storage operation latency",
    ["backend", "operation", "outcome"],
    buckets=_LATENCY_BUCKETS,
)
SHED = Counter(
    "putplace_shed_total",
    "Backend operations refused at once (503) because the process ran its cap of them",
    ["backend", "operation"],
)

SESSIONS = Counter(
    "putplace_upload_sessions_total",
    "Upload sessions by what became of them: created, completed, aborted, expired, mismatch, refused",
    ["outcome"],
)
SESSION_CHUNKS = Counter("putplace_upload_session_chunks_total", "Chunks received by outcome", ["outcome"])
SESSION_RECEIVED_BYTES = Counter(
    "putplace_upload_session_received_bytes_total", "Chunk body bytes read, whether or not the chunk was kept"
)
SESSION_HELD_BYTES = Counter(
    "putplace_upload_session_held_bytes_total", "Bytes of the chunks written completely (held by a session)"
)
SESSION_CHUNKS_IN_PROGRESS = Gauge(
    "putplace_upload_session_chunks_in_progress", "Chunk requests being received now", multiprocess_mode="livesum"
)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
