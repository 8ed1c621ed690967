"""One contract for every content storage backend: local disk, SeaweedFS S3, MinIO S3."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from putplace_api.errors import BackendUnavailable
from putplace_api.settings import Settings
from putplace_api.storage import ContentStorage, open_storage, s3_sessions
from putplace_api.storage.local import LocalStorage
from putplace_api.storage.packs import put_pack
from putplace_api.storage.s3 import PART_SIZE
from tests.api.conftest import put_objects, s3_settings
from tests.servers.base import free_ports

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["local", "seaweedfs", "minio"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    overrides: dict[str, object] = {"data_dir": tmp_path}
    if request.param != "local":
        overrides |= s3_settings(request.getfixturevalue(request.param), prefix="pp/")
    yield Settings(_env_file=None, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def storage(settings: Settings) -> AsyncIterator[ContentStorage]:
    store = open_storage(settings)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _put(storage: ContentStorage, data: bytes, chunk: int = 65536) -> str:
    sha = _sha(data)
    w = await storage.writer(sha)
    for i in range(0, len(data), chunk):
        await w.write(data[i : i + chunk])
    await w.commit()
    return sha


async def _read(storage: ContentStorage, sha: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([c async for c in storage.read(sha, start, end)])


async def test_write_commit_read(storage: ContentStorage) -> None:
    data = os.urandom(300_000)
    sha = await _put(storage, data)
    assert await storage.exists(sha)
    assert await storage.size(sha) == len(data)
    assert await _read(storage, sha) == data
    assert await _read(storage, sha, 1000, 2000) == data[1000:2000]
    assert await _read(storage, sha, len(data) - 10) == data[-10:]
    assert storage.location(sha).endswith(f"{sha[:2]}/{sha}")


async def test_empty_content(storage: ContentStorage) -> None:
    sha = await _put(storage, b"")
    assert await storage.size(sha) == 0 and await _read(storage, sha) == b""


async def test_multipart_sized_content(storage: ContentStorage) -> None:
    data = os.urandom(PART_SIZE * 2 + 12345)
    sha = await _put(storage, data, chunk=1024 * 1024)
    assert await storage.size(sha) == len(data)
    assert _sha(await _read(storage, sha)) == sha


async def test_nothing_visible_before_commit_and_nothing_after_abort(storage: ContentStorage) -> None:
    for size in (1000, PART_SIZE + 1):
        data = os.urandom(size)
        sha = _sha(data)
        w = await storage.writer(sha)
        await w.write(data)
        assert not await storage.exists(sha)
        await w.abort()
        await w.abort()  # idempotent
        assert not await storage.exists(sha)


async def test_missing_content(storage: ContentStorage) -> None:
    sha = "0" * 64
    assert not await storage.exists(sha)
    assert await storage.size(sha) is None
    with pytest.raises(FileNotFoundError):
        await _read(storage, sha)
    assert await storage.delete(sha) is False


async def test_concurrent_writers_of_one_sha_leave_one_object(storage: ContentStorage) -> None:
    data = os.urandom(200_000)
    await asyncio.gather(*(_put(storage, data) for _ in range(5)))
    assert await _read(storage, _sha(data)) == data


async def test_a_pack_holds_contents_readable_by_range(storage: ContentStorage) -> None:
    contents = [os.urandom(n) for n in (0, 1, 4096, 70_000)] + [b"twice", b"twice"]
    placed = await put_pack(storage, [(_sha(c), c) for c in contents])
    (pack_id,) = {p.pack_id for p in placed}
    assert [(p.sha256, p.size) for p in placed] == [(_sha(c), len(c)) for c in contents]
    for p, c in zip(placed, contents, strict=True):
        assert await _read_pack(storage, pack_id, p.offset, p.offset + p.size) == c
        assert not await storage.exists(p.sha256)  # no object per content
    big = placed[3]
    assert await _read_pack(storage, pack_id, big.offset + 10, big.offset + 20) == contents[3][10:20]
    total = sum(map(len, contents))
    assert await _read_pack(storage, pack_id, total - 5, total + 100) == b"twice"  # past the end: what there is
    assert await _read_pack(storage, pack_id, total + 10, total + 20) == b""
    stat = await storage.stat_pack(pack_id)
    assert stat is not None and (stat.name, stat.size, stat.pack_id, stat.sha256) == (
        f"packs/{pack_id}",
        total,
        pack_id,
        None,
    )
    assert [o async for o in storage.list_objects()] == [stat]
    assert storage.pack_location(pack_id).endswith(f"packs/{pack_id}")
    if isinstance(storage, LocalStorage):
        assert list(storage._tmp.iterdir()) == []  # no temp file left behind
    assert await storage.delete_pack(pack_id) is True and await storage.delete_pack(pack_id) is False
    assert await storage.stat_pack(pack_id) is None
    with pytest.raises(FileNotFoundError):
        await _read_pack(storage, pack_id, 0, 1)


async def _read_pack(storage: ContentStorage, pack_id: str, start: int, end: int) -> bytes:
    return b"".join([c async for c in storage.read_pack(pack_id, start, end)])


async def test_delete(storage: ContentStorage) -> None:
    sha = await _put(storage, b"bye")
    assert await storage.delete(sha) is True
    assert not await storage.exists(sha)


async def _put_foreign(storage: ContentStorage, name: str, data: bytes) -> None:
    """An object this service did not write, under ``name``."""
    if isinstance(storage, LocalStorage):
        (storage.root / name).parent.mkdir(parents=True, exist_ok=True)
        (storage.root / name).write_bytes(data)
    else:
        await storage._client.put_object(Bucket=storage.bucket, Key=storage.prefix + name, Body=data)


async def test_list_objects_shows_committed_objects_and_foreign_names(storage: ContentStorage) -> None:
    assert [o async for o in storage.list_objects()] == []
    before = datetime.now(UTC) - timedelta(seconds=5)  # S3 keeps whole seconds
    contents = [b"one", os.urandom(70_000), b""]
    shas = [await _put(storage, c) for c in contents]
    pending = await storage.writer(_sha(b"uncommitted"))
    await pending.write(b"uncommitted")
    wrong_dir = _sha(b"misplaced")
    await _put_foreign(storage, f"zz/{wrong_dir}", b"misplaced")
    await _put_foreign(storage, "ab/not-a-sha", b"x")
    listed = {o.name: o async for o in storage.list_objects()}
    await pending.abort()
    assert {n: (o.sha256, o.size) for n, o in listed.items()} == {
        f"{s[:2]}/{s}": (s, len(c)) for s, c in zip(shas, contents, strict=True)
    } | {f"zz/{wrong_dir}": (None, 9), "ab/not-a-sha": (None, 1)}
    after = datetime.now(UTC) + timedelta(seconds=5)
    assert all(before <= o.modified <= after for o in listed.values())
    for s in shas:
        assert await storage.stat(s) == listed[f"{s[:2]}/{s}"]
    assert await storage.stat("0" * 64) is None


async def test_list_objects_pages_through_many_objects(storage: ContentStorage) -> None:
    contents = [f"object {i}".encode() for i in range(1005)]  # over one S3 listing page (1000)
    await put_objects(storage, [(_sha(c), c) for c in contents])
    listed = [o.sha256 async for o in storage.list_objects()]
    assert sorted(listed) == sorted(_sha(c) for c in contents)  # type: ignore[type-var]


async def test_ping(storage: ContentStorage) -> None:
    await storage.ping()


async def test_unreachable_s3_is_backend_unavailable(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        storage_url="s3://nowhere/x/",
        s3_endpoint_url=f"http://127.0.0.1:{port}",
        s3_access_key_id="k",
        s3_secret_access_key="s",
        s3_region="us-east-1",
    )
    storage = open_storage(settings)
    await storage.open()
    try:
        with pytest.raises(BackendUnavailable):
            await storage.ping()
        with pytest.raises(BackendUnavailable):
            await storage.exists("0" * 64)
        w = await storage.writer("0" * 64)
        with pytest.raises(BackendUnavailable):
            await w.write(b"x" * (PART_SIZE + 1))
    finally:
        await storage.close()


def test_local_temp_files_stay_on_the_same_filesystem(tmp_path: Path) -> None:
    # os.replace is atomic only within one filesystem: temps live under the root.
    from putplace_api.storage.local import LocalStorage

    storage = LocalStorage(tmp_path / "c")
    assert storage._tmp.parent == storage.root


# -- upload sessions -------------------------------------------------------------------------
SESSION_CHUNK = 5 * 1024 * 1024  # S3's smallest part but the last


async def _body(data: bytes, fail: bool = False) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 65536):
        yield data[i : i + 65536]
    if fail:  # what the caller's size or hash check does: raise from inside the body
        raise ValueError("refused by the caller")


def _part(data: bytes, n: int) -> bytes:
    return data[n * SESSION_CHUNK : (n + 1) * SESSION_CHUNK]


async def _sessions(storage: ContentStorage) -> dict[str, str]:
    return {s.session_id: s.ref async for s in storage.list_sessions()}


async def test_session_chunks_in_any_order_assemble_then_commit(storage: ContentStorage) -> None:
    data = os.urandom(2 * SESSION_CHUNK + 1000)
    sid = uuid.uuid4().hex
    ref = await storage.begin_session(sid, len(data))
    assert await storage.held_chunks(sid, ref) == set()
    before = datetime.now(UTC) - timedelta(seconds=5)
    for n in (2, 0):
        await storage.write_chunk(sid, ref, n, n * SESSION_CHUNK, _body(_part(data, n)))
    with pytest.raises(ValueError):  # a chunk refused on the way is not held
        await storage.write_chunk(sid, ref, 1, SESSION_CHUNK, _body(data[SESSION_CHUNK : 2 * SESSION_CHUNK], True))
    assert await storage.held_chunks(sid, ref) == {0, 2}
    listed = [s async for s in storage.list_sessions()]
    assert [s.session_id for s in listed] == [sid] and listed[0].modified > before
    await storage.write_chunk(sid, ref, 1, SESSION_CHUNK, _body(data[SESSION_CHUNK : 2 * SESSION_CHUNK]))
    assert await storage.held_chunks(sid, ref) == {0, 1, 2}
    assembled = await storage.assemble(sid, ref, 3, 100)
    assert (assembled.sha256, assembled.size, assembled.head) == (_sha(data), len(data), data[:100])
    assert not await storage.exists(_sha(data))  # nothing visible before commit
    assert [o async for o in storage.list_objects()] == []
    await assembled.commit()
    assert await _read(storage, _sha(data)) == data
    assert [o.sha256 async for o in storage.list_objects()] == [_sha(data)]
    assert await _sessions(storage) == {}
    with pytest.raises(FileNotFoundError):
        await storage.held_chunks(sid, ref)


async def test_session_abort_and_a_discarded_assembly_leave_nothing(storage: ContentStorage) -> None:
    data = os.urandom(SESSION_CHUNK + 10)
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    refs = {sid: await storage.begin_session(sid, len(data)) for sid in (first, second)}
    for sid, ref in refs.items():
        await storage.write_chunk(sid, ref, 0, 0, _body(data[:SESSION_CHUNK]))
        await storage.write_chunk(sid, ref, 1, SESSION_CHUNK, _body(data[SESSION_CHUNK:]))
    assert await _sessions(storage) == refs
    await storage.abort_session(first, refs[first])
    await storage.abort_session(first, refs[first])  # idempotent
    with pytest.raises(FileNotFoundError):
        await storage.held_chunks(first, refs[first])
    assembled = await storage.assemble(second, refs[second], 2, 10)
    await assembled.abort()
    await storage.abort_session(second, refs[second])
    assert await _sessions(storage) == {}
    assert [o async for o in storage.list_objects()] == []
    assert not await storage.exists(_sha(data))


async def test_session_assembled_again_after_a_crash_before_commit(storage: ContentStorage) -> None:
    """The server stopped between assembling and committing: assembling again works (S3: the
    upload is complete into its staging key; local: the file is still there)."""
    data = os.urandom(SESSION_CHUNK + 10)
    sid = uuid.uuid4().hex
    ref = await storage.begin_session(sid, len(data))
    await storage.write_chunk(sid, ref, 0, 0, _body(data[:SESSION_CHUNK]))
    await storage.write_chunk(sid, ref, 1, SESSION_CHUNK, _body(data[SESSION_CHUNK:]))
    first = await storage.assemble(sid, ref, 2, 0)
    del first  # neither committed nor aborted (local: its lock goes with its file, as with a dead process)
    again = await storage.assemble(sid, ref, 2, 0)
    assert again.sha256 == _sha(data)
    await again.commit()
    assert await _read(storage, _sha(data)) == data


async def test_session_beyond_copy_object_limit_is_copied_in_parts(
    storage: ContentStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond CopyObject's 5 GB an assembled content is copied part by part (UploadPartCopy):
    the same path, taken here with the limit and the part lowered to 5 MiB (real servers)."""
    monkeypatch.setattr(s3_sessions, "COPY_LIMIT", SESSION_CHUNK)
    monkeypatch.setattr(s3_sessions, "COPY_PART", SESSION_CHUNK)
    data = os.urandom(2 * SESSION_CHUNK + 1000)
    sid = uuid.uuid4().hex
    ref = await storage.begin_session(sid, len(data))
    for n in range(3):
        await storage.write_chunk(sid, ref, n, n * SESSION_CHUNK, _body(_part(data, n)))
    assembled = await storage.assemble(sid, ref, 3, 0)
    await assembled.commit()
    assert await _read(storage, _sha(data)) == data
    assert [o.sha256 async for o in storage.list_objects()] == [_sha(data)]
    assert await _sessions(storage) == {}


@pytest.mark.parametrize("refused_at", ["open", "write"])
async def test_local_storage_without_direct_io_writes_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused_at: str
) -> None:
    """A filesystem that refuses O_DIRECT (at open, or only at the first write) gets the same
    bytes, written buffered, for an upload and for a session's chunks. Such a filesystem cannot
    be had here (tmpfs has direct I/O since Linux 6.6), so the refusal is injected: EINVAL, what
    Linux answers."""
    import errno
    import fcntl

    from putplace_api.storage.direct_io import DIRECT_BLOCK

    real_open, real_write = os.open, os.write

    def refusing_open(path: str, flags: int, mode: int = 0o777) -> int:
        if refused_at == "open" and flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    def refusing_write(fd: int, data: bytes) -> int:
        if refused_at == "write" and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(os, "write", refusing_write)
    storage = LocalStorage(tmp_path / "c")
    await storage.open()
    data = os.urandom(2 * DIRECT_BLOCK + 12345)
    sha = await _put(storage, data, chunk=1024 * 1024 + 1)
    chunked = os.urandom(2 * SESSION_CHUNK + 777)
    sid = uuid.uuid4().hex
    ref = await storage.begin_session(sid, len(chunked))
    for n in (2, 0, 1):
        await storage.write_chunk(sid, ref, n, n * SESSION_CHUNK, _body(_part(chunked, n)))
    await (await storage.assemble(sid, ref, 3, 0)).commit()
    monkeypatch.undo()
    assert await _read(storage, sha) == data
    assert await _read(storage, _sha(chunked)) == chunked
    assert os.listdir(tmp_path / "c" / ".tmp") == []
    assert await _sessions(storage) == {}
