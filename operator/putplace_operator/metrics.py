"""The operator's Prometheus metrics: reconciles, errors and durations by kind, objects by readiness.

``reconciling(kind)`` wraps one reconcile; ``set_ready`` / ``forget`` keep the per-object
readiness behind ``putplace_operator_objects``. Served by ``cli.py`` on ``metrics_port``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["declare", "forget", "reconciling", "set_ready"]

RECONCILES = Counter(
    "putplace_operator_reconciles_total", "Reconciles of PutPlace objects, by kind and result", ["kind", "result"]
)
ERRORS = Counter(
    "putplace_operator_reconcile_errors_total", "Failed reconciles, by kind and reason", ["kind", "reason"]
)
DURATION = Histogram(
    "putplace_operator_reconcile_duration_seconds",
    "Time one reconcile took, by kind",
    ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
OBJECTS = Gauge("putplace_operator_objects", "PutPlace objects watched, by kind and Ready condition", ["kind", "ready"])

_ready: dict[str, dict[str, bool]] = {}  # kind -> uid -> Ready


def declare(kind: str, reasons: Iterable[str]) -> None:
    """Export 0 for a kind's results and known failure reasons before they happen, so alerts and
    dashboards see a series rather than nothing."""
    for result in ("success", "error"):
        RECONCILES.labels(kind, result)
    for reason in reasons:
        ERRORS.labels(kind, reason)
    _publish(kind)


class Outcome:
    """Filled in by the reconcile: the reason it failed (None = success)."""

    reason: str | None = None


@contextmanager
def reconciling(kind: str) -> Iterator[Outcome]:
    outcome = Outcome()
    start = time.perf_counter()
    try:
        yield outcome
    except Exception as exc:
        outcome.reason = outcome.reason or type(exc).__name__
        raise
    finally:
        DURATION.labels(kind).observe(time.perf_counter() - start)
        RECONCILES.labels(kind, "error" if outcome.reason else "success").inc()
        if outcome.reason:
            ERRORS.labels(kind, outcome.reason).inc()


def _publish(kind: str) -> None:
    states = _ready.get(kind, {})
    ready = sum(states.values())
    OBJECTS.labels(kind, "true").set(ready)
    OBJECTS.labels(kind, "false").set(len(states) - ready)


def set_ready(kind: str, uid: str, ready: bool) -> None:
    _ready.setdefault(kind, {})[uid] = ready
    _publish(kind)


def forget(uid: str) -> None:
    for kind, states in _ready.items():
        if states.pop(uid, None) is not None:
            _publish(kind)
