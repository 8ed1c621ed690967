"""Shared helpers of the fault tests: private servers a test may stop and start again, a client
uploading a stream of contents that records every answer, and the end-of-test check that nothing
is lost or corrupt.

Every fault test ends with ``assert_intact``: each intended (host, path) is catalogued with its
sha256 and its content; each stored content downloads and re-hashes to its sha256; and storage
holds exactly the stored contents, one object each, under the name of its hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import ADMIN_KEY, meta, s3_settings
from tests.processes import Agent, ApiProcess, agent_factory
from tests.servers import ferretdb, minio
from tests.servers.base import Server, ServerError, make_workdir
from tests.servers.s3 import S3Server, s3_ready
from tests.waiting import wait_until

__all__ = [
    "Answer",
    "BackendApi",
    "Key",
    "Objects",
    "PrivateServer",
    "UploadStream",
    "api_env_for_s3",
    "assert_claims_hold",
    "assert_intact",
    "assert_only_503_with_retry_after",
    "bucket_objects",
    "converged",
    "local_objects",
    "outage_under_load",
    "sha",
    "tree_state",
    "write_tree",
]

# The API under test gives up on a dead database after 3 s and asks clients to come back in 1 s,
# so an outage shows quickly and the tests stay short. Not 1 s: FerretDB, busy with the agent's
# backlog on a loaded 2-core machine, took over 1 s to answer right after its restart, and a
# slow answer is rightly a 503 too.
FAST_API = {"PUTPLACE_DATABASE_TIMEOUT_SECONDS": "3", "PUTPLACE_RETRY_AFTER_SECONDS": "1"}

Key = tuple[str, str]  # (hostname, filepath)
Objects = Callable[[], dict[str, bytes]]  # lists a storage: object name -> bytes


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def start_api(tmp_path: Path) -> Iterator[Callable[..., ApiProcess]]:
    """Start a real ``putplace-api`` process with fast outage settings (plus the given
    ``PUTPLACE_*`` variables); stopped at the end of the test."""
    started: list[ApiProcess] = []

    def start(**env: str) -> ApiProcess:
        api = ApiProcess(tmp_path / f"api{len(started)}", env={**FAST_API, **env})
        api.workdir.mkdir(parents=True)
        started.append(api)
        api.start()
        return api

    yield start
    for api in started:
        api.stop()
    for api in started:
        assert_no_error_logged(api)


def assert_no_error_logged(api: ApiProcess) -> None:
    """The API (or uvicorn) logged no error: a 500 answered to the agent (which retries it
    silently) or a record found to claim missing content would show here first. (aiohttp, under
    aiobotocore, may log an unretrieved "Cannot write to closing transport" of a request to an
    S3 server that went away: its own background task, not an answer of ours.)"""
    log = api.workdir / "api.log"
    errors = [line for line in log.read_text(errors="replace").splitlines() if _is_error(line)]
    assert not errors, f"{len(errors)} errors in {log}, e.g. {[e[:300] for e in errors[:2]]}"


def _is_error(line: str) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return "Traceback" in line
    return (
        isinstance(record, dict)
        and record.get("level") in ("ERROR", "CRITICAL")
        and str(record.get("logger", "")).startswith(("putplace", "uvicorn"))
    )


@dataclass(frozen=True)
class BackendApi:
    api: ApiProcess
    list_objects: Objects  # lists its content storage


@pytest.fixture(params=["sqlite+local", "mongodb+minio"])
def backend_api(request: pytest.FixtureRequest, start_api: Callable[..., ApiProcess]) -> BackendApi:
    """A real API process on each backend pair: the embedded defaults, and the session's FerretDB
    (a fresh database) and MinIO (a fresh bucket), which the test must not stop."""
    if request.param == "sqlite+local":
        api = start_api()
        return BackendApi(api, partial(local_objects, api.workdir / "data" / "content"))
    mongodb_url: str = request.getfixturevalue("mongodb_url")
    s3: S3Server = request.getfixturevalue("minio")
    env = api_env_for_s3(s3)
    # FerretDB answers many clients slowly on a busy machine: the usual patience, so that load is
    # not mistaken for an outage (which is what the 1 s of the outage tests is for).
    api = start_api(
        PUTPLACE_DATABASE_URL=mongodb_url.rstrip("/") + f"/pp_{uuid.uuid4().hex[:12]}",
        PUTPLACE_DATABASE_TIMEOUT_SECONDS="10",
        **env,
    )
    return BackendApi(api, partial(bucket_objects, s3, env["PUTPLACE_STORAGE_URL"].split("/")[2]))


@pytest.fixture
def make_agent(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    """Makes ``putplace-agent sync`` processes (``make_agent(api=..., root=..., node=...)``);
    any still running at the end of the test is killed."""
    with agent_factory(tmp_path) as make:
        yield make


def api_env_for_s3(server: S3Server) -> dict[str, str]:
    """The API's environment for content in a fresh bucket of ``server``."""
    return {f"PUTPLACE_{name.upper()}": str(value) for name, value in s3_settings(server).items()}


# -- private servers ----------------------------------------------------------------------------


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


def _private(name: str, start: Callable[[Path], Server], tmp_path: Path) -> Server:
    try:
        return start(make_workdir(name, tmp_path))
    except ServerError as error:
        failure = f"{name}: {error}"
    pytest.fail(failure, pytrace=False)


@pytest.fixture
def private_ferretdb(tmp_path: Path) -> Iterator[PrivateServer]:
    """A FerretDB of this test alone; ``server.env[ferretdb.ENV_URL]`` is its URL."""
    server = _private("ferretdb", ferretdb.start, tmp_path)
    url = server.env[ferretdb.ENV_URL]
    yield PrivateServer(server, lambda: ferretdb.ping(url))
    server.stop()


@pytest.fixture
def private_minio(tmp_path: Path) -> Iterator[tuple[PrivateServer, S3Server]]:
    """A MinIO of this test alone, and how to reach it."""
    server = _private("minio", minio.start, tmp_path)
    s3 = S3Server.from_env("minio", server.env)
    assert s3 is not None
    yield PrivateServer(server, lambda: s3_ready(s3)), s3
    server.stop()


# -- a client uploading a stream of contents ----------------------------------------------------


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


# -- a tree for an agent -----------------------------------------------------------------------


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


def tree_state(root: Path) -> dict[str, str]:
    """Every file under ``root``: path -> sha256 of what it holds now."""
    return {str(p): sha(p.read_bytes()) for p in root.rglob("*") if p.is_file()}


def converged(api: ApiProcess, node: str, expected: dict[str, str]) -> bool:
    """The node's catalogue is exactly ``expected`` (path -> sha256), every content stored."""
    records = api.records(node)
    return {r["filepath"]: r["sha256"] for r in records} == expected and all(r["has_file_content"] for r in records)


# -- nothing lost, nothing corrupt --------------------------------------------------------------


def local_objects(root: Path) -> dict[str, bytes]:
    """Every object of local content storage by name; each must sit at ``{sha[:2]}/{sha}``."""
    out: dict[str, bytes] = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if rel.parts[0] == ".tmp" or path.is_dir():
            continue
        assert len(rel.parts) == 2 and rel.parts[0] == rel.name[:2], f"stray file in storage: {rel}"
        out[rel.name] = path.read_bytes()
    return out


def bucket_objects(s3: S3Server, bucket: str, prefix: str = "content/") -> dict[str, bytes]:
    """Every object under ``prefix`` of an S3 bucket by name; each must be ``{prefix}{sha[:2]}/{sha}``."""
    client = s3.client()
    out: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            name = item["Key"].rsplit("/", 1)[-1]
            assert item["Key"] == f"{prefix}{name[:2]}/{name}", f"stray object in the bucket: {item['Key']}"
            assert name not in out, f"two objects for {name}"
            out[name] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return out


def assert_claims_hold(api: ApiProcess, list_objects: Objects) -> list[dict[str, Any]]:
    """No record claims content that is not there: every stored content downloads and re-hashes
    to its sha256 and has its object; no object holds bytes other than its name says. Returns
    the catalogue."""
    records = api.records()
    objects = list_objects()  # after the records: what they claim must already be there
    stored = {r["sha256"] for r in records if r["has_file_content"]}
    with api.http() as c:
        for digest in sorted(stored):
            r = c.get(f"/content/{digest}")
            assert r.status_code == 200, f"content {digest}: {r.status_code} {r.text}"
            assert sha(r.content) == digest, f"content {digest} downloads as other bytes"
    corrupt = sorted(name for name, data in objects.items() if sha(data) != name)
    assert not corrupt, f"objects whose bytes do not match their name: {corrupt[:3]}"
    missing = sorted(stored - objects.keys())
    assert not missing, f"{len(missing)} contents marked stored have no object, e.g. {missing[:3]}"
    return records


def assert_intact(
    api: ApiProcess, expected: dict[Key, str], list_objects: Objects, superseded: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Every expected record is there with its sha256 and its content; no claim is false
    (``assert_claims_hold``); storage holds exactly the stored contents, plus perhaps the
    ``superseded`` ones (earlier versions of files, which no current record names). Returns the
    catalogue."""
    records = assert_claims_hold(api, list_objects)
    objects = list_objects()  # the writers are done: storage and catalogue must agree
    found = {(r["hostname"], r["filepath"]): r for r in records}
    missing = sorted(k for k in expected if k not in found)
    assert not missing, f"{len(missing)} records lost, e.g. {missing[:3]}"
    wrong = {k: found[k]["sha256"] for k, digest in expected.items() if found[k]["sha256"] != digest}
    assert not wrong, f"{len(wrong)} records with the wrong sha256, e.g. {list(wrong.items())[:3]}"
    no_content = sorted(k for k in expected if not found[k]["has_file_content"])
    assert not no_content, f"{len(no_content)} records without content, e.g. {no_content[:3]}"
    unclaimed = sorted(objects.keys() - {r["sha256"] for r in records if r["has_file_content"]} - set(superseded))
    assert not unclaimed, f"{len(unclaimed)} objects no record claims, e.g. {unclaimed[:3]}"
    return records
