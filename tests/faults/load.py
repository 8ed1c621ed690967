"""Load and outages for the fault tests: a private server a test may stop and start again, a
client uploading a stream of contents that records every answer, the outage scenario built from
them, and a tree of files for an agent."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.api.conftest import ADMIN_KEY, meta
from tests.faults.integrity import Key, sha
from tests.processes import ApiProcess
from tests.servers.base import Server
from tests.waiting import wait_until

__all__ = [
    "Answer",
    "PrivateServer",
    "UploadStream",
    "assert_only_503_with_retry_after",
    "outage_under_load",
    "write_tree",
]


@dataclass
class PrivateServer:
    """A server only one test uses, so it may stop it and start it again -- same port, same data --
    while the API keeps running (the session's shared servers must never be stopped)."""

    server: Server
    ready: Callable[[], bool]

    def stop(self, *, crash: bool = False) -> None:
        """Shut the server down, or with ``crash`` kill -9 it in the middle of what it does."""
        if crash:
            self.server.process.kill()
        else:
            self.server.process.stop()

    def restart(self) -> None:
        self.server.process = self.server.process.respawn()
        self.server.process.wait_ready(self.ready, timeout=60)


@dataclass(frozen=True)
class Answer:
    request: str
    status: int  # 0: no answer (connection refused or cut)
    retry_after: str | None
    detail: str


class UploadStream(threading.Thread):
    """One client storing distinct contents one after another -- POST /put_file, then
    /upload_file when asked, then GET /content to read it back -- each step retried until it
    succeeds, as an agent would. Every answer is kept, so a test can check that an outage gave
    503s with Retry-After and nothing worse; a read that returns other bytes fails the stream."""

    def __init__(self, api: ApiProcess, hostname: str, size: int = 32 * 1024) -> None:
        super().__init__(name=f"uploads-{hostname}", daemon=True)
        self.api = api
        self.hostname = hostname
        self.size = size
        self.intended: dict[Key, str] = {}  # every file it set out to store
        self.stored = 0
        self.answers: list[Answer] = []
        self._stopping = threading.Event()
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.api.url, headers={"X-API-Key": ADMIN_KEY}, timeout=15) as c:
                n = 0
                while not self._stopping.is_set():
                    data = f"{self.hostname} #{n}\n".encode() + os.urandom(self.size)
                    body = meta(data, hostname=self.hostname, filepath=f"/stream/{n}")
                    self.intended[(self.hostname, body["filepath"])] = body["sha256"]
                    self._store(c, body, data)
                    self._read_back(c, body["sha256"], data)
                    self.stored += 1
                    n += 1
        except BaseException as exc:  # reported by finish(), in the test's thread
            self._error = exc

    def _store(self, c: httpx.Client, body: dict[str, Any], data: bytes) -> None:
        while True:
            r = self._call(c, "/put_file", json=body)
            if r is not None and r.status_code == 201:
                if not r.json()["upload_required"]:
                    return
                r = self._call(c, f"/upload_file/{body['sha256']}", content=data)
                if r is not None and r.status_code == 200:
                    return
            if r is not None and r.status_code < 500:
                raise AssertionError(f"{r.request.url.path}: {r.status_code} {r.text}")
            time.sleep(0.1)  # an outage: try again soon (sooner than Retry-After, to keep watching)

    def _read_back(self, c: httpx.Client, digest: str, data: bytes) -> None:
        while True:
            r = self._call(c, f"/content/{digest}", method="GET")
            if r is not None and r.status_code == 200:
                if r.content != data:
                    raise AssertionError(f"/content/{digest} answered 200 with other bytes")
                return
            if r is not None and r.status_code < 500:
                raise AssertionError(f"/content/{digest}: {r.status_code} {r.text}")
            time.sleep(0.1)

    def _call(self, c: httpx.Client, path: str, method: str = "POST", **kwargs: Any) -> httpx.Response | None:
        try:
            r = c.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            self.answers.append(Answer(path.split("/")[1], 0, None, repr(exc)))
            return None
        self.answers.append(Answer(path.split("/")[1], r.status_code, r.headers.get("retry-after"), r.text[:200]))
        return r

    def statuses(self) -> set[int]:
        return {a.status for a in list(self.answers)}

    def finish(self, timeout: float = 30) -> None:
        """Stop after the content in hand is stored; fail if that takes over ``timeout`` s."""
        self._stopping.set()
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} did not finish its last upload within {timeout} s"
        if self._error is not None:
            raise AssertionError(f"{self.name} failed: {self._error!r}") from self._error


def outage_under_load(
    api: ApiProcess,
    backend: PrivateServer,
    which: str,
    *,
    crash: bool,
    during: Callable[[], None] = lambda: None,
    clients: int = 3,
) -> dict[Key, str]:
    """Stop (or crash) ``backend`` while ``clients`` streams upload, then start it again, and
    check the API through it: 503 + Retry-After and ``/health`` degraded (``which``
    disconnected) during the outage; healthy and storing again afterwards, with no 5xx at all,
    in the same API process. ``during`` runs while the backend is down. Returns what the clients
    intended to store, for ``assert_intact``."""
    pid = api.pid
    streams = [UploadStream(api, f"host-{i}") for i in range(clients)]
    for stream in streams:
        stream.start()
    try:
        wait_until(lambda: all(s.stored >= 3 for s in streams), 30, "uploads before the outage")
        backend.stop(crash=crash)
        wait_until(lambda: all(503 in s.statuses() for s in streams), 15, "every client to get a 503")
        with api.http() as c:
            health = c.get("/health").json()
            assert health["status"] == "degraded", health
            assert health[which]["status"] == "disconnected", health
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
        during()
        before = [s.stored for s in streams]
        backend.restart()
        with api.http() as c:
            wait_until(lambda: c.get("/health").json()["status"] == "healthy", 30, "/health to say healthy")
        wait_until(
            lambda: all(s.stored >= n + 3 for s, n in zip(streams, before, strict=True)),
            30,
            "uploads to go through again",
        )
        recovered = [(len(s.answers), s.stored) for s in streams]
        wait_until(
            lambda: all(s.stored >= n + 3 for s, (_, n) in zip(streams, recovered, strict=True)),
            30,
            "more uploads after the recovery",
        )
        after = [a for s, (seen, _) in zip(streams, recovered, strict=True) for a in s.answers[seen:]]
        late = [a for a in after if a.status >= 500]
        assert not late, f"{len(late)} server errors after the recovery, e.g. {late[:3]}"
    finally:
        for stream in streams:
            stream.finish()
    assert api.pid == pid and api.process is not None and api.process.alive(), "the API was restarted"
    answers = [a for s in streams for a in s.answers]
    assert_only_503_with_retry_after(answers)
    dropped = [a for a in answers if a.status == 0]
    assert not dropped, f"the API dropped {len(dropped)} connections, e.g. {dropped[:3]}"
    return {k: v for s in streams for k, v in s.intended.items()}


def assert_only_503_with_retry_after(answers: list[Answer]) -> None:
    """No server error but 503, and every 503 says when to come back."""
    bad = [a for a in answers if a.status >= 500 and (a.status != 503 or not a.retry_after)]
    assert not bad, f"{len(bad)} server errors other than 503 + Retry-After, e.g. {bad[:3]}"


def write_tree(root: Path, count: int, size: int, prefix: str = "f") -> dict[str, str]:
    """``count`` files of distinct random bytes; returns path -> sha256."""
    out = {}
    for i in range(count):
        path = root / f"d{i % 20:02}" / f"{prefix}{i:05}"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(size)
        path.write_bytes(data)
        out[str(path)] = sha(data)
    return out
