"""``putplace-api verify`` and ``putplace-api gc`` as an operator runs them: a subprocess beside
a live ``putplace-api`` process, on SQLite + local disk and on FerretDB + MinIO.

Damage is done through the real backends (``open_store`` / ``open_storage`` with the server's
settings): an object overwritten with other bytes, an object deleted, an object stored with no
record, a stored content record no file record names (what history pruning would leave).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from putplace_api.maintenance.common import Backends
from putplace_api.maintenance.gc import GcOptions, collect_garbage
from putplace_api.maintenance.lease import LeaseBusy, LeaseLost, exclusive
from putplace_api.maintenance.verify import VerifyOptions, verify
from putplace_api.settings import Settings
from putplace_api.storage import ContentStorage, open_storage
from putplace_api.storage.base import object_name
from putplace_api.storage.local import LocalStorage
from putplace_api.store import MetadataStore, open_store
from putplace_api.store.base import StoredContent
from putplace_client.client import PutPlaceClient
from putplace_client.models import FileMetadata
from tests.api.conftest import ADMIN_KEY, make_settings, meta, put_objects, s3_settings, sha
from tests.processes import ApiProcess

T = TypeVar("T")


@dataclass
class Deployment:
    """A running putplace-api, and the settings its maintenance commands share with it."""

    workdir: Path
    overrides: dict[str, Any]
    api: ApiProcess

    @property
    def env(self) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("PUTPLACE_")}
        values = {f"PUTPLACE_{k.upper()}": str(v) for k, v in self.overrides.items()}
        return clean | values | {"PUTPLACE_DATA_DIR": str(self.workdir / "data"), "PUTPLACE_LOG_LEVEL": "warning"}

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "putplace_api.cli", *args],
            env=self.env | (env or {}),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def report(self, *args: str) -> tuple[int, dict[str, Any]]:
        r = self.cli(*args, "--json")
        assert r.returncode in (0, 1), r.stderr
        return r.returncode, json.loads(r.stdout)

    def settings(self) -> Settings:
        return make_settings(self.workdir, **self.overrides)

    def backends(self, action: Callable[[MetadataStore, ContentStorage], Awaitable[T]]) -> T:
        """Run ``action`` on the deployment's own store and storage."""

        async def run() -> T:
            store, storage = open_store(self.settings()), open_storage(self.settings())
            await store.open()
            await storage.open()
            try:
                return await action(store, storage)
            finally:
                await storage.close()
                await store.close()

        return asyncio.run(run())

    def upload(self, data: bytes, path: str) -> str:
        """put_file + upload through the shared client, as an agent does."""

        async def run() -> None:
            async with PutPlaceClient(self.api.url, ADMIN_KEY) as client:
                answer = await client.put_file(FileMetadata.model_validate(meta(data, filepath=path)))
                if answer.upload_required:
                    await client.upload(sha(data), data)

        asyncio.run(run())
        return sha(data)

    def store_objects(self, *contents: bytes) -> None:
        """Objects written straight to storage: no record, no check."""
        self.backends(lambda _, storage: put_objects(storage, [(sha(c), c) for c in contents]))


@pytest.fixture(params=["sqlite+local", "mongodb+minio"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    overrides: dict[str, Any] = {}
    if request.param == "mongodb+minio":
        base = request.getfixturevalue("mongodb_url").rstrip("/")
        overrides = {
            "database_url": f"{base}/pp_{uuid.uuid4().hex[:12]}",
            **s3_settings(request.getfixturevalue("minio")),
        }
    deployment = Deployment(tmp_path, overrides, ApiProcess(tmp_path))
    deployment.api.env = {k: v for k, v in deployment.env.items() if k.startswith("PUTPLACE_")}
    deployment.api.start()
    try:
        yield deployment
    finally:
        deployment.api.stop()


def _names(report: dict[str, Any], kind: str) -> set[str]:
    return {i["sha256"] if isinstance(i, dict) else i for i in report[kind]["items"]}


def test_verify_reports_corrupt_missing_and_orphan_content(deployment: Deployment) -> None:
    contents = [b"alpha\n", b"beta\n" * 1000, os.urandom(300_000), b""]
    shas = [deployment.upload(c, f"/v/{i}") for i, c in enumerate(contents)]
    with deployment.api.http() as c:
        announced = c.post("/put_file", json=meta(b"never uploaded", filepath="/v/pending"))
    assert announced.status_code in (200, 201), announced.text

    code, report = deployment.report("verify")
    assert code == 0 and report["ok"] is True, report
    assert report["checked"] == 4 and report["checked_bytes"] == sum(map(len, contents))
    assert _names(report, "pending") == {sha(b"never uploaded")}  # information, not an error

    corrupt, gone = shas[1], shas[2]
    deployment.backends(lambda _, storage: put_objects(storage, [(corrupt, b"beta\n" * 999 + b"BETA\n")]))
    deployment.backends(lambda _, storage: storage.delete(gone))
    deployment.store_objects(b"orphan")

    code, report = deployment.report("verify", "--concurrency", "2")
    assert code == 1 and report["ok"] is False
    assert _names(report, "corrupt") == {corrupt} and _names(report, "missing") == {gone}
    assert _names(report, "orphan") == {sha(b"orphan")} and report["orphan"]["severity"] == "warning"
    assert report["dangling"]["count"] == 0

    async def lose_record(store: MetadataStore, _: ContentStorage) -> None:
        pending = await store.get_content(sha(b"never uploaded"))
        assert pending is not None and await store.delete_contents_if_unchanged([pending]) == {pending.sha256}

    deployment.backends(lose_record)  # the file record now names content with no record at all
    code, report = deployment.report("verify")
    assert _names(report, "dangling") == {sha(b"never uploaded")} and report["pending"]["count"] == 0
    sampled = deployment.report("verify", "--sample", "2")[1]
    assert sampled["checked"] + sampled["missing"]["count"] == 2  # two of the four stored contents

    text = deployment.cli("verify", "--sample", "10")
    assert text.returncode == 1 and "result: PROBLEMS FOUND" in text.stdout
    assert f"{corrupt} bytes hash to" in text.stdout and f"{gone} object missing" in text.stdout
    sampled = deployment.cli("verify", "--sample-fraction", "0", "--json")
    assert json.loads(sampled.stdout)["checked"] == 0


def test_gc_collects_unreferenced_and_orphan_content_only(deployment: Deployment) -> None:
    v1 = deployment.upload(b"version one\n", "/g/file")
    v2 = deployment.upload(b"version two\n", "/g/file")  # v1 is now named by history only
    kept = deployment.upload(b"current\n", "/g/other")

    async def unreferenced(store: MetadataStore, storage: ContentStorage) -> None:
        await put_objects(storage, [(sha(b"unreferenced"), b"unreferenced")])
        await store.mark_stored(
            sha(b"unreferenced"), 12, None, storage.location(sha(b"unreferenced")), datetime.now(UTC)
        )

    deployment.backends(unreferenced)
    deployment.store_objects(b"orphan object")
    garbage = {sha(b"unreferenced"), sha(b"orphan object")}
    time.sleep(1.1)  # S3 keeps whole seconds: everything above is now older than a 1s grace

    code, report = deployment.report("gc", "--grace", "1h", "--delete")
    assert code == 0 and report["collected"]["count"] == 0  # all of it is younger than the grace

    code, report = deployment.report("gc", "--grace", "1s")
    assert code == 0 and report["dry_run"] is True
    assert _names(report, "collected") == garbage and report["collected"]["bytes"] == 12 + 13
    code, report = deployment.report("verify")
    assert report["checked"] == 4 and _names(report, "orphan") == {sha(b"orphan object")}  # dry run kept all

    r = deployment.cli("gc", "--grace", "1s", "--delete")
    assert r.returncode == 0, r.stderr
    assert "deleted 2 contents, 25 bytes" in r.stdout

    code, report = deployment.report("verify")
    assert code == 0 and report["checked"] == 3 and report["orphan"]["count"] == 0, report
    with deployment.api.http() as c:
        for digest, data in ((v1, b"version one\n"), (v2, b"version two\n"), (kept, b"current\n")):
            assert c.get(f"/content/{digest}").content == data
    assert deployment.report("gc", "--grace", "0s", "--delete")[1]["collected"]["count"] == 0


def test_a_second_gc_delete_is_refused_while_one_holds_the_lease(deployment: Deployment) -> None:
    """Two deleting runs at once could lose content: the second is refused, deletes nothing and
    says why in one line; the dry run needs no lease; once free, gc --delete runs again."""
    deployment.store_objects(b"orphan object")
    time.sleep(1.1)  # S3 keeps whole seconds: the orphan is older than a 1s grace
    rival = "another-host:1:gc"

    async def take(store: MetadataStore, _: ContentStorage) -> bool:
        now = datetime.now(UTC)
        return await store.take_lease("gc", rival, now, now + timedelta(minutes=10))

    assert deployment.backends(take)
    r = deployment.cli("gc", "--grace", "1s", "--delete")
    assert r.returncode == 4, r.stderr
    assert r.stderr.count("\n") == 1 and "another gc --delete is running" in r.stderr, r.stderr
    assert _names(deployment.report("verify")[1], "orphan") == {sha(b"orphan object")}  # nothing deleted
    code, report = deployment.report("gc", "--grace", "1s")
    assert code == 0 and _names(report, "collected") == {sha(b"orphan object")}

    async def release(store: MetadataStore, _: ContentStorage) -> None:
        await store.release_lease("gc", rival)

    deployment.backends(release)
    for _ in range(2):  # the first run released the lease when it ended
        r = deployment.cli("gc", "--grace", "1s", "--delete")
        assert r.returncode == 0, r.stderr
    assert deployment.report("verify")[1]["orphan"]["count"] == 0


def test_gc_grace_spares_young_orphans_on_local_storage(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, {}, ApiProcess(tmp_path))
    deployment.store_objects(b"old orphan", b"young orphan")
    storage = open_storage(deployment.settings())
    assert isinstance(storage, LocalStorage)
    two_days_ago = time.time() - 2 * 86400
    os.utime(storage.root / object_name(sha(b"old orphan")), (two_days_ago, two_days_ago))
    (storage.root / "notes.txt").write_text("an operator's file: never collected")

    r = deployment.cli("gc", "--delete")  # the default grace: 24h
    assert r.returncode == 0, r.stderr
    assert sha(b"old orphan") in r.stdout and sha(b"young orphan") not in r.stdout
    assert not (storage.root / object_name(sha(b"old orphan"))).exists()
    assert (storage.root / object_name(sha(b"young orphan"))).exists() and (storage.root / "notes.txt").exists()
    code, report = deployment.report("verify")
    assert _names(report, "foreign") == {"notes.txt"} and _names(report, "orphan") == {sha(b"young orphan")}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("command", [["verify"], ["gc", "--delete"]])
@pytest.mark.parametrize("backend", ["database", "storage"])
def test_unreachable_backend_is_one_line(tmp_path: Path, command: list[str], backend: str) -> None:
    deployment = Deployment(tmp_path, {}, ApiProcess(tmp_path))
    (tmp_path / "data" / "content" / ".tmp").mkdir(parents=True)  # local storage as the server leaves it
    if backend == "database":
        env = {
            "PUTPLACE_DATABASE_URL": f"mongodb://127.0.0.1:{_closed_port()}/pp",
            "PUTPLACE_DATABASE_TIMEOUT_SECONDS": "0.5",
        }
    else:
        env = {
            "PUTPLACE_STORAGE_URL": "s3://nowhere/content/",
            "PUTPLACE_S3_ENDPOINT_URL": f"http://127.0.0.1:{_closed_port()}",
            "PUTPLACE_S3_ACCESS_KEY_ID": "k",
            "PUTPLACE_S3_SECRET_ACCESS_KEY": "s",
            "PUTPLACE_S3_REGION": "us-east-1",
        }
    r = deployment.cli(*command, env=env)
    assert r.returncode == 3, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{backend} unavailable" in lines[0] and "Traceback" not in r.stderr


def test_a_mistyped_data_dir_is_refused_and_left_uncreated(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, {}, ApiProcess(tmp_path))
    for command in (["verify"], ["gc", "--delete"]):
        r = deployment.cli("--data-dir", str(tmp_path / "typo"), *command)
        assert r.returncode == 3 and "storage unavailable" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize(
    "args",
    [["gc", "--grace", "soon"], ["verify", "--sample", "-1"], ["verify", "--sample", "1", "--sample-fraction", "0.5"]],
)
def test_bad_usage_is_exit_2_with_one_line(tmp_path: Path, args: list[str]) -> None:
    r = Deployment(tmp_path, {}, ApiProcess(tmp_path)).cli(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("putplace-api") and "Traceback" not in r.stderr


def test_verify_while_uploads_run_reports_no_false_problem(deployment: Deployment) -> None:
    stop = threading.Event()
    uploaded: list[str] = []

    async def upload_forever() -> None:
        async with PutPlaceClient(deployment.api.url, ADMIN_KEY) as client:
            n = 0
            while not stop.is_set():
                data = os.urandom(256 * 1024 + n)
                answer = await client.put_file(FileMetadata.model_validate(meta(data, filepath=f"/live/{n}")))
                if answer.upload_required:
                    await client.upload(sha(data), data)
                uploaded.append(sha(data))
                n += 1

    uploader = threading.Thread(target=lambda: asyncio.run(upload_forever()))
    uploader.start()
    try:
        deadline = time.monotonic() + 60
        while len(uploaded) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(2):
            code, report = deployment.report("verify", "--concurrency", "8")
            assert code == 0, report
            assert report["corrupt"]["count"] == report["missing"]["count"] == report["dangling"]["count"] == 0
    finally:
        stop.set()
        uploader.join(timeout=60)
    assert len(uploaded) > 3


class Interleaved:
    """The real store, with a concurrent client's put_file (FileMetadata), the end of its
    upload (StoredContent) or any other call (a coroutine function) landing just before chosen
    calls of gc (the n-th call of a method): a race made deterministic, the backends untouched."""

    def __init__(
        self,
        store: MetadataStore,
        before: dict[tuple[str, int], FileMetadata | StoredContent | Callable[[], Awaitable[None]]],
    ) -> None:
        self._store = store
        self._before = before
        self._calls: dict[str, int] = {}
        self.answers: dict[str, bool] = {}  # sha256 -> the put_file answer's "already stored"

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            self._calls[name] = n = self._calls.get(name, 0) + 1
            late = self._before.get((name, n))
            if isinstance(late, FileMetadata):
                (put,) = await self._store.put_files([late], datetime.now(UTC))
                self.answers[late.sha256] = put.content.stored
            elif isinstance(late, StoredContent):
                await self._store.mark_stored_many([late], datetime.now(UTC))
            elif late is not None:
                await late()
            return await attr(*args, **kwargs)

        return call


@pytest.fixture(params=["sqlite", "mongodb"])
def race_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        return make_settings(tmp_path)
    url = request.getfixturevalue("mongodb_url").rstrip("/") + f"/pp_{uuid.uuid4().hex[:12]}"
    return make_settings(tmp_path, database_url=url)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_run_that_could_not_renew_its_lease_stops_before_its_next_step(race_settings: Settings) -> None:
    """A paused run (here: its event loop blocked past the lease) is overtaken by another; it
    must not begin another step, and it must not free the lease the other now holds."""

    async def next_run_takes_over() -> bool:
        other = open_store(race_settings)  # another process's connection
        await other.open()
        try:
            now = datetime.now(UTC)
            return await other.take_lease("gc", "the next run", now, now + timedelta(minutes=1))
        finally:
            await other.close()

    def pause() -> None:
        time.sleep(1.3)  # longer than the lease: no renewal meanwhile, it runs out
        taken.append(asyncio.run(next_run_takes_over()))

    taken: list[bool] = []
    store = open_store(race_settings)
    await store.open()
    try:
        async with exclusive(store, "gc", seconds=1.2) as held:
            held.check()  # fresh: a step may begin
            await asyncio.sleep(0.5)  # renewed meanwhile (every 0.2 s)
            held.check()
            paused = threading.Thread(target=pause)
            paused.start()
            paused.join()  # blocks this event loop, as a paused process would be
            assert taken == [True]
            with pytest.raises(LeaseLost):
                held.check()
            await asyncio.sleep(0.5)  # the renewal finds the lease taken
            assert held.lost
        now = datetime.now(UTC)
        assert not await store.take_lease("gc", "a third run", now, now)  # still the next run's
        with pytest.raises(LeaseBusy):
            async with exclusive(store, "gc"):
                pass
    finally:
        await store.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_gc_racing_put_file_never_leaves_metadata_claiming_deleted_content(race_settings: Settings) -> None:
    """A put_file names a content gc is collecting: before gc deletes its record (restored),
    after (a fresh record: upload needed), after gc re-checked the references (its object
    stays); one upload ends just before the orphan pass would delete its object (kept);
    content nobody names is collected."""
    contents = {name: f"{name} content".encode() for name in ("before", "after", "late", "nobody")}
    store, storage = open_store(race_settings), open_storage(race_settings)
    await store.open()
    await storage.open()
    try:
        await put_objects(storage, [(sha(c), c) for c in contents.values()])
        stored = [StoredContent(sha(c), len(c), None, storage.location(sha(c))) for c in contents.values()]
        await store.mark_stored_many(stored, datetime.now(UTC))

        def naming(name: str) -> FileMetadata:
            return FileMetadata.model_validate(meta(contents[name], filepath=f"/race/{name}"))

        racing = Interleaved(
            store,
            {
                ("delete_contents_if_unchanged", 1): naming("before"),
                ("referenced", 2): naming("after"),
                ("contents", 1): naming("late"),
                # contents: 2 = gc's check for lost content, 3 = the orphan listing's records,
                # 4 = the records read again just before the orphans are deleted.
                ("contents", 4): StoredContent(sha(contents["after"]), 13, None, "uploaded"),
            },
        )
        backends = Backends(cast(MetadataStore, racing), storage)
        report = await collect_garbage(backends, GcOptions(grace_seconds=0, delete=True))

        assert racing.answers == {
            sha(contents["before"]): True,
            sha(contents["after"]): False,
            sha(contents["late"]): False,
        }
        assert report.ok and {(c.sha256, c.what) for c in report.collected.items} == {
            (sha(contents["nobody"]), "unreferenced content"),
            # Told to upload, its record not stored: the orphan pass may take the object
            # (grace 0 here); the upload brings it back.
            (sha(contents["late"]), "orphan object"),
        }
        assert {sha(contents["after"]), sha(contents["late"])} <= set(report.kept.items)
        rows = await store.contents([sha(c) for c in contents.values()])
        for name in ("before", "after"):  # stored, and so is the object
            assert rows[sha(contents[name])].stored and await storage.exists(sha(contents[name]))
        assert not rows[sha(contents["late"])].stored
        assert sha(contents["nobody"]) not in rows and not await storage.exists(sha(contents["nobody"]))
        verified = await verify(backends, VerifyOptions())
        assert verified.ok and verified.checked == 2 and verified.pending.count == 1
    finally:
        await storage.close()
        await store.close()
