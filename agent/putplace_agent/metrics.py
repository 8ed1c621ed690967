"""Prometheus metrics of the agent (prometheus-client, default registry, one process).

Served on ``--metrics-port``. Labels never carry a path: kinds, reasons and queue names only.
The ``Tally`` keeps the same counts as plain numbers for the progress display and the summary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["Tally", "QUEUE_DEPTH", "LAST_SCAN", "SCAN_SECONDS", "CHANGE_LATENCY", "WATCH_POLLING", "ERRORS"]

_P = "putplace_agent_"

FILES_SEEN = Counter(_P + "files_seen_total", "files looked at by scans and watch events")
FILES_HASHED = Counter(_P + "files_hashed_total", "files hashed (new or changed stat signature)")
FILES_UPLOADED = Counter(_P + "files_uploaded_total", "contents uploaded")
FILES_SKIPPED = Counter(_P + "files_skipped_total", "files that needed no upload", ["reason"])
FILES_DELETED = Counter(_P + "files_deleted_total", "records deleted because the file is gone")
BYTES_HASHED = Counter(_P + "bytes_hashed_total", "bytes read and hashed")
BYTES_UPLOADED = Counter(_P + "bytes_uploaded_total", "content bytes uploaded")
BYTES_DEDUPLICATED = Counter(_P + "bytes_deduplicated_total", "bytes not uploaded because the server had them")
ERRORS = Counter(_P + "errors_total", "errors by kind", ["kind"])
# Exported as 0 from the start, so alerts and dashboards see a series before the first error.
ERROR_KINDS = ("unreadable", "changing", "changed_while_hashing", "rejected", "api_unavailable", "watch",
               "watch_limit", "internal")  # fmt: skip
for _kind in ERROR_KINDS:
    ERRORS.labels(_kind)
QUEUE_DEPTH = Gauge(_P + "queue_depth", "work waiting, by stage", ["queue"])
LAST_SCAN = Gauge(_P + "last_scan_completed_timestamp_seconds", "when the last full scan completed (unix time)")
SCAN_SECONDS = Gauge(_P + "last_scan_duration_seconds", "how long the last full scan took")
WATCH_POLLING = Gauge(_P + "watch_polling", "1 if the tree is polled because the OS watch limit was hit", ["root"])
CHANGE_LATENCY = Histogram(
    _P + "change_to_catalogue_seconds",
    "from a watch event to the record (and its content) being in the catalogue",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)


@dataclass
class Tally:
    """Counts of this run, mirrored into the Prometheus counters as they grow."""

    seen: int = 0
    hashed: int = 0
    unchanged: int = 0
    deduplicated: int = 0
    uploaded: int = 0
    deleted: int = 0
    failed: int = 0
    bytes_hashed: int = 0
    bytes_uploaded: int = 0
    bytes_deduplicated: int = 0
    bytes_to_hash: int = 0  # found changed by scans so far: the progress total
    started: float = field(default_factory=time.monotonic)

    def add_seen(self, n: int, unchanged: int) -> None:
        self.seen += n
        self.unchanged += unchanged
        FILES_SEEN.inc(n)
        FILES_SKIPPED.labels("unchanged").inc(unchanged)

    def add_hashed(self, size: int) -> None:
        self.hashed += 1
        self.bytes_hashed += size
        FILES_HASHED.inc()
        BYTES_HASHED.inc(size)

    def add_deduplicated(self, size: int) -> None:
        self.deduplicated += 1
        self.bytes_deduplicated += size
        FILES_SKIPPED.labels("deduplicated").inc()
        BYTES_DEDUPLICATED.inc(size)

    def add_uploaded(self, size: int) -> None:
        self.uploaded += 1
        self.bytes_uploaded += size
        FILES_UPLOADED.inc()
        BYTES_UPLOADED.inc(size)

    def add_deleted(self) -> None:
        self.deleted += 1
        FILES_DELETED.inc()

    def add_error(self, kind: str, *, failed: bool = True) -> None:
        """``failed`` counts towards the run's exit status; a retried hiccup does not."""
        ERRORS.labels(kind).inc()
        if failed:
            self.failed += 1

    def as_dict(self) -> dict[str, int | float]:
        out: dict[str, int | float] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "started"}
        out["seconds"] = round(time.monotonic() - self.started, 3)
        return out
