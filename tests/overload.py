"""Holding an API's only database slot for real, for the suites that need a request shed."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.waiting import wait_until


@contextmanager
def write_holding_the_only_slot(
    db: Path, http: Callable[[], httpx.Client], body: dict[str, Any]
) -> Iterator[list[httpx.Response]]:
    """Inside the block, a ``/put_file`` of ``body`` holds the one database slot of an API run with
    ``PUTPLACE_DATABASE_MAX_CONCURRENCY=1``: SQLite keeps it waiting (busy timeout) on a lock taken
    here on ``db``, so any other request is shed. Yields the write's answers, complete after the
    block: 503s while the probe here held the slot first, then its own."""
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    answers: list[httpx.Response] = []

    def slow_write() -> None:
        # Sent again while shed: the probe below may hold the only slot for a moment just as
        # this request authenticates (a 503 before its write) -- the client's retry, as agents do.
        with http() as c:
            for _ in range(200):
                answers.append(c.post("/put_file", json=body))
                if answers[-1].status_code != 503:
                    return
                time.sleep(0.05)

    writer = threading.Thread(target=slow_write)
    try:
        writer.start()
        with http() as c:
            # A read probes, so that no write of the caller's own can take the slot first.
            wait_until(lambda: c.get("/stats").status_code == 503, 30, "the slow write to hold the only slot")
        yield answers
    finally:
        lock.execute("ROLLBACK")
        lock.close()
        writer.join(timeout=60)
