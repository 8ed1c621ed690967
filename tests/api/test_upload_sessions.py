"""Upload sessions (chunked, resumable uploads) over real sockets, on both backend pairs:
SQLite + local disk and FerretDB (MongoDB wire) + SeaweedFS (S3). Driven by the shared client."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from putplace_api.maintenance.common import Backends
from putplace_api.maintenance.gc import GcOptions, collect_garbage
from putplace_api.storage import open_storage
from putplace_api.storage.base import SessionData
from putplace_api.store import open_store
from putplace_api.store.base import SessionRow
from putplace_client import PutPlaceClient
from putplace_client.errors import ConflictError, NotFoundError, StatusError
from putplace_client.models import FileMetadata, UploadSession
from tests.api.conftest import ADMIN_KEY, Api, make_settings, meta, s3_settings, serve_app, sha
from tests.webhook_receiver import receiving

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024
CHUNK = 8 * MIB  # the default chunk size
DATA = os.urandom(2 * CHUNK + 12_345)  # three chunks, the last one short


@pytest.fixture(params=["sqlite+local", "mongodb+s3"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings overrides of each backend pair (a fresh database and bucket each time)."""
    if request.param == "sqlite+local":
        return {}
    url = request.getfixturevalue("mongodb_url").rstrip("/") + f"/pp_{uuid.uuid4().hex[:12]}"
    return {"database_url": url, **s3_settings(request.getfixturevalue("seaweedfs"))}


@pytest.fixture
async def client(start_api: Callable[..., Api], backend: dict[str, Any]) -> AsyncIterator[tuple[Api, PutPlaceClient]]:
    api = start_api(**backend)
    async with PutPlaceClient(api.url, api.admin_key) as c:
        yield api, c


async def _announce(c: PutPlaceClient, data: bytes, path: str = "/data/big.img") -> None:
    r = await c.put_file(FileMetadata.model_validate(meta(data, filepath=path)))
    assert r.upload_required


def _chunk(data: bytes, session: UploadSession, n: int) -> bytes:
    start, end = session.chunk_span(n)
    return data[start:end]


async def _session_data(api: Api) -> list[SessionData]:
    """What storage keeps of sessions, read with a storage of the API's own settings."""
    storage = open_storage(api.settings, sweep_temps=False)
    await storage.open()
    try:
        return [s async for s in storage.list_sessions()]
    finally:
        await storage.close()


def _metric(api: Api, name: str, labels: str = "") -> float:
    with api.http() as c:
        text = c.get("/metrics").text
    sample = f"{name}{{{labels}}} " if labels else f"{name} "
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(sample))


async def test_chunks_in_any_order_resumed_then_completed(client: tuple[Api, PutPlaceClient]) -> None:
    api, c = client
    await _announce(c, DATA)
    session = await c.create_upload_session(sha(DATA), len(DATA))
    assert (session.chunk_size, session.chunks, session.held) == (CHUNK, 3, [])
    # Last first, two at once; the server tells which it holds.
    await asyncio.gather(
        c.put_chunk(session, 2, _chunk(DATA, session, 2)), c.put_chunk(session, 0, _chunk(DATA, session, 0))
    )
    status = await c.upload_session(session.upload_id)
    assert status.held == [0, 2] and status.missing() == [1]
    with pytest.raises(StatusError) as missing:
        await c.complete_upload_session(session.upload_id)
    assert missing.value.status_code == 400 and "lacks 1 chunks: 1" in str(missing.value.detail)
    with pytest.raises(NotFoundError):
        await c.download(sha(DATA))
    # A held chunk sent again is not written again (its bytes do not even matter).
    held_before = _metric(api, "putplace_upload_session_held_bytes_total")
    await c.put_chunk(session, 0, b"x" * CHUNK)
    assert _metric(api, "putplace_upload_session_held_bytes_total") == held_before
    await c.put_chunk(session, 1, _chunk(DATA, session, 1), chunk_sha256=sha(_chunk(DATA, session, 1)))
    done = await c.complete_upload_session(session.upload_id, hostname="node-1", filepath="/data/big.img")
    assert (done.sha256, done.size, done.filepath) == (sha(DATA), str(len(DATA)), "/data/big.img")
    assert await c.download(sha(DATA)) == DATA
    assert (await c.get_file(sha(DATA))).sha256 == sha(DATA)
    with pytest.raises(NotFoundError):  # the session is gone, and so are its chunks
        await c.upload_session(session.upload_id)
    assert await _session_data(api) == []
    again = await c.put_file(FileMetadata.model_validate(meta(DATA, filepath="/data/copy.img")))
    assert not again.upload_required
    with pytest.raises(ConflictError):  # stored: nothing left to upload
        await c.create_upload_session(sha(DATA), len(DATA))


async def test_upload_chunked_sends_only_missing_chunks_from_a_file(
    client: tuple[Api, PutPlaceClient], tmp_path: Path
) -> None:
    api, c = client
    path = tmp_path / "big"
    path.write_bytes(DATA)
    await _announce(c, DATA)
    session = await c.create_upload_session(sha(DATA), len(DATA))
    await c.put_chunk(session, 1, path)  # a file's span, streamed
    received = _metric(api, "putplace_upload_session_received_bytes_total")
    resumed = await c.upload_session(session.upload_id)
    done = await c.upload_chunked(resumed, path, parallel=2)
    assert done.sha256 == sha(DATA) and await c.download(sha(DATA)) == DATA
    sent = _metric(api, "putplace_upload_session_received_bytes_total") - received
    assert sent == len(DATA) - CHUNK  # chunk 1 was not sent again


async def test_bad_input_is_refused_and_changes_nothing(client: tuple[Api, PutPlaceClient]) -> None:
    api, c = client
    await _announce(c, DATA)
    with pytest.raises(NotFoundError):  # never announced
        await c.create_upload_session("ab" * 32, 10)
    with pytest.raises(ConflictError) as wrong_size:
        await c.create_upload_session(sha(DATA), len(DATA) + 1)
    assert f"was announced with {len(DATA)} bytes, not {len(DATA) + 1}" in str(wrong_size.value.detail)
    session = await c.create_upload_session(sha(DATA), len(DATA))
    url = f"/uploads/{session.upload_id}"
    with api.http() as h:
        for body, status in ((b"short", 400), (_chunk(DATA, session, 0) + b"!", 400)):
            r = h.put(f"{url}/chunks/0", content=body)
            assert r.status_code == status and "chunk" in r.json()["detail"]
        r = h.put(f"{url}/chunks/3", content=b"x")
        assert r.status_code == 400 and r.json() == {
            "detail": "Chunk 3 is out of range: this session has chunks 0 to 2"
        }
        assert h.put(f"{url}/chunks/-1", content=b"x").status_code == 422
        r = h.put(f"{url}/chunks/2", content=_chunk(DATA, session, 2), headers={"X-Chunk-SHA256": "0" * 64})
        assert r.status_code == 400 and "X-Chunk-SHA256" in r.json()["detail"]
        r = h.put(f"{url}/chunks/2", content=_chunk(DATA, session, 2), headers={"X-Chunk-SHA256": "nothex"})
        assert r.status_code == 400 and r.json() == {"detail": "X-Chunk-SHA256 must be 64 lowercase hex digits"}
        for unknown in ("0" * 32, "not-an-id", "x" * 64):
            for method, path in (("GET", ""), ("PUT", "/chunks/0"), ("POST", "/complete"), ("DELETE", "")):
                r = h.request(method, f"/uploads/{unknown}{path}", content=b"x" if method == "PUT" else None)
                assert r.status_code == 404 and r.json() == {"detail": f"No upload session {unknown}"}, (method, r.text)
        r = h.post("/uploads", json={"sha256": sha(DATA), "size": 0})
        assert r.status_code == 422
        r = h.post("/uploads", json={"sha256": sha(DATA), "size": 5, "extra": 1})
        assert r.status_code == 422
    # Another key (even one with write) does not see the session; an admin does.
    other = api.new_key("read", "write")
    with api.http(key=other) as h:
        for method, path in (("GET", ""), ("PUT", "/chunks/0"), ("POST", "/complete"), ("DELETE", "")):
            r = h.request(method, f"{url}{path}", content=_chunk(DATA, session, 0) if method == "PUT" else None)
            assert r.status_code == 404 and r.json() == {"detail": f"No upload session {session.upload_id}"}
    with api.http(key=api.new_key("read")) as h:
        assert h.get(url).status_code == 403
    assert (await c.upload_session(session.upload_id)).held == []  # nothing of the above was kept
    # A quota too small for the content: refused before anything is received.
    with api.http(key=api.new_key("read", "write", max_bytes=len(DATA) - 1)) as h:
        r = h.post("/uploads", json={"sha256": sha(DATA), "size": len(DATA)})
        assert r.status_code == 413 and "quota" in r.json()["detail"]
    await c.abort_upload_session(session.upload_id)
    with pytest.raises(NotFoundError):
        await c.upload_session(session.upload_id)
    assert await _session_data(api) == []


async def test_mismatch_at_complete_discards_the_session(client: tuple[Api, PutPlaceClient]) -> None:
    api, c = client
    await _announce(c, DATA)
    session = await c.create_upload_session(sha(DATA), len(DATA))
    forged = os.urandom(len(DATA))  # the right size, the wrong bytes
    for n in range(session.chunks):
        await c.put_chunk(session, n, _chunk(forged, session, n))
    with pytest.raises(StatusError) as refused:
        await c.complete_upload_session(session.upload_id)
    assert refused.value.status_code == 400
    assert f"does not match provided hash ({sha(DATA)})" in str(refused.value.detail)
    with pytest.raises(NotFoundError):
        await c.upload_session(session.upload_id)
    with pytest.raises(NotFoundError):
        await c.download(sha(DATA))
    assert await _session_data(api) == []
    storage = open_storage(api.settings, sweep_temps=False)
    await storage.open()
    try:  # nothing was published under either content's name
        assert [o async for o in storage.list_objects()] == []
    finally:
        await storage.close()
    assert (await c.put_file(FileMetadata.model_validate(meta(DATA)))).upload_required


@asynccontextmanager
async def _backends(api: Api) -> AsyncIterator[tuple[Any, Any]]:
    """The API's own database and storage, opened beside it by the test."""
    store, storage = open_store(api.settings), open_storage(api.settings, sweep_temps=False)
    await store.open()
    await storage.open()
    try:
        yield store, storage
    finally:
        await storage.close()
        await store.close()


async def _expired_session(api: Api, data: bytes) -> SessionRow:
    """A session of ``data`` holding its chunk 0, idle since long before its expiry."""
    async with _backends(api) as (store, storage):
        long_ago = datetime.now(UTC) - timedelta(days=2)
        session_id = uuid.uuid4().hex
        ref = await storage.begin_session(session_id, len(data))

        async def chunk0() -> AsyncIterator[bytes]:
            yield data[:CHUNK]

        await storage.write_chunk(session_id, ref, 0, 0, chunk0())
        row = SessionRow(session_id, sha(data), len(data), CHUNK, "any-key", ref, long_ago, long_ago)
        await store.insert_session(row)  # from now on the API may discard it
        return row


async def test_expired_sessions_are_refused_and_discarded(
    start_api: Callable[..., Api], backend: dict[str, Any]
) -> None:
    api = start_api(**backend)  # its first look for expired sessions is a minute away
    asked = await _expired_session(api, DATA)
    with api.http() as h:  # asked about, it is refused as expired and discarded at once
        r = h.get(f"/uploads/{asked.id}")
        assert r.status_code == 404 and r.json() == {"detail": f"Upload session {asked.id} has expired"}
        assert h.get(f"/uploads/{asked.id}").json() == {"detail": f"No upload session {asked.id}"}
    # A short lifetime: this API looks for expired sessions every half second.
    api = start_api(**backend, upload_session_ttl_seconds=1)
    idle = await _expired_session(api, DATA)
    # Nobody asks about this one: the API's periodic pass discards it, chunks and all (that
    # storage lists a session's chunks is the storage contract's, test_storage_contract.py).
    # The pass removes the chunks first, then the record, then counts it: wait for all three
    # (the API runs in another thread, so the test may look between two of them).
    deadline = asyncio.get_running_loop().time() + 60
    async with _backends(api) as (store, _):
        while (
            await _session_data(api)
            or await store.get_session(idle.id) is not None
            or _metric(api, "putplace_upload_sessions_total", 'outcome="expired"') < 1
        ):
            assert asyncio.get_running_loop().time() < deadline, "the expired session was not discarded"
            await asyncio.sleep(0.2)


@pytest.fixture
def restartable(tmp_path: Path, backend: dict[str, Any]) -> Iterator[Callable[[], Any]]:
    """Start the API again and again on the same database and storage."""
    settings = make_settings(tmp_path / "api", **backend)
    stack: list[Any] = []

    def start() -> Any:
        if stack:
            stack.pop().__exit__(None, None, None)
        cm = serve_app(settings)
        stack.append(cm)
        return cm.__enter__()

    yield start
    for cm in stack:
        cm.__exit__(None, None, None)


async def test_a_session_survives_a_server_restart(restartable: Callable[[], Any]) -> None:
    served = restartable()
    async with PutPlaceClient(served.url, ADMIN_KEY) as c:
        await _announce(c, DATA)
        session = await c.create_upload_session(sha(DATA), len(DATA))
        await c.put_chunk(session, 0, _chunk(DATA, session, 0))
        await c.put_chunk(session, 2, _chunk(DATA, session, 2))
    served = restartable()
    async with PutPlaceClient(served.url, ADMIN_KEY) as c:
        resumed = await c.upload_session(session.upload_id)
        assert resumed.held == [0, 2]
        await c.put_chunk(resumed, 1, _chunk(DATA, resumed, 1))
        await c.complete_upload_session(resumed.upload_id)
        assert await c.download(sha(DATA)) == DATA


async def test_gc_reclaims_expired_and_abandoned_sessions_never_a_live_one(
    start_api: Callable[..., Api], backend: dict[str, Any], tmp_path: Path
) -> None:
    api = start_api(**backend)
    async with PutPlaceClient(api.url, api.admin_key) as c:
        await _announce(c, DATA)
        live = await c.create_upload_session(sha(DATA), len(DATA))
        await c.put_chunk(live, 0, _chunk(DATA, live, 0))
    expired = await _expired_session(api, DATA)
    async with _backends(api) as (store, storage):
        abandoned = uuid.uuid4().hex  # data with no record: its record was lost
        await storage.begin_session(abandoned, len(DATA))
        later = datetime.now(UTC) + timedelta(hours=1)  # everything is older than a grace of 0 then
        dry = await collect_garbage(Backends(store, storage), GcOptions(grace_seconds=0), now=later)
        found = {(item.sha256, item.what) for item in dry.collected.items}
        assert found == {
            (expired.id, "expired upload session"),
            (abandoned, "upload session data without a session"),
        }
        assert {s.session_id for s in await _session_data(api)} == {live.upload_id, expired.id, abandoned}
        done = await collect_garbage(Backends(store, storage), GcOptions(grace_seconds=0, delete=True), now=later)
        assert {(item.sha256, item.what) for item in done.collected.items} == found and done.ok
        assert {s.session_id for s in await _session_data(api)} == {live.upload_id}
        assert await store.get_session(expired.id) is None
    async with PutPlaceClient(api.url, api.admin_key) as c:  # the live session is whole
        resumed = await c.upload_session(live.upload_id)
        assert resumed.held == [0]
        (tmp_path / "source").write_bytes(DATA)
        await c.upload_chunked(resumed, tmp_path / "source")
        assert await c.download(sha(DATA)) == DATA


async def test_completion_tells_webhooks_as_an_upload_does(
    start_api: Callable[..., Api], backend: dict[str, Any]
) -> None:
    api = start_api(**backend, webhook_poll_seconds=0.2)
    forged = os.urandom(len(DATA))
    with receiving() as receiver, api.http() as h:
        r = h.post(
            "/webhooks/subscriptions", json={"url": receiver.url(), "events": ["file.uploaded", "upload.mismatch"]}
        )
        assert r.status_code == 201, r.text
        async with PutPlaceClient(api.url, api.admin_key) as c:
            await _announce(c, DATA)
            for data in (forged, DATA):  # a mismatch first, then the right bytes in a new session
                session = await c.create_upload_session(sha(DATA), len(DATA))
                for n in range(session.chunks):
                    await c.put_chunk(session, n, _chunk(data, session, n))
                try:
                    await c.complete_upload_session(session.upload_id, hostname="node-1", filepath="/data/big.img")
                except StatusError as exc:
                    assert exc.status_code == 400 and data is forged
        delivered = receiver.wait_for(2)
    assert [(d.event, d.payload["data"]["sha256"]) for d in delivered] == [
        ("upload.mismatch", sha(DATA)),
        ("file.uploaded", sha(DATA)),
    ]
    assert delivered[1].payload["data"] == {
        "sha256": sha(DATA), "size": len(DATA), "mime_type": "application/octet-stream",
        "hostname": "node-1", "filepath": "/data/big.img",
    }  # fmt: skip


async def test_completion_cut_short_after_publishing_completes_when_asked_again(
    client: tuple[Api, PutPlaceClient],
) -> None:
    """The API stopped between publishing the content and recording it: the content is under its
    name, the session still open. Completing again records it (no chunk is sent again)."""
    api, c = client
    await _announce(c, DATA)
    session = await c.create_upload_session(sha(DATA), len(DATA))
    for n in range(session.chunks):
        await c.put_chunk(session, n, _chunk(DATA, session, n))
    async with _backends(api) as (store, storage):  # what the stopped completion had done
        row = await store.get_session(session.upload_id)
        assembled = await storage.assemble(row.id, row.storage_ref, session.chunks, 0)
        await assembled.commit()
    with pytest.raises(NotFoundError):  # published, but not marked stored: not served yet
        await c.download(sha(DATA))
    done = await c.complete_upload_session(session.upload_id)
    assert done.sha256 == sha(DATA) and await c.download(sha(DATA)) == DATA
    with pytest.raises(NotFoundError):
        await c.upload_session(session.upload_id)
    assert await _session_data(api) == []


async def test_chunks_larger_than_the_json_request_cap_are_taken(start_api: Callable[..., Api]) -> None:
    """Chunk bodies are streamed and checked against their exact size, not held to
    max_request_bytes (the cap of JSON bodies)."""
    api = start_api(upload_chunk_bytes=6 * MIB, max_request_bytes=MIB)
    data = os.urandom(6 * MIB + 10)
    async with PutPlaceClient(api.url, api.admin_key) as c:
        await _announce(c, data)
        session = await c.create_upload_session(sha(data), len(data))
        assert (session.chunk_size, session.chunks) == (6 * MIB, 2)
        for n in range(session.chunks):
            await c.put_chunk(session, n, _chunk(data, session, n))
        await c.complete_upload_session(session.upload_id)
        assert await c.download(sha(data)) == data
    with api.http() as h:  # the JSON route of sessions keeps the cap
        r = h.post("/uploads", content=b"{" + b" " * (2 * MIB) + b"}", headers={"Content-Type": "application/json"})
        assert r.status_code == 413
