"""One contract for every content storage backend: local disk, SeaweedFS S3, MinIO S3."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from putplace_api.errors import BackendUnavailable
from putplace_api.settings import Settings
from putplace_api.storage import ContentStorage, open_storage
from putplace_api.storage.local import LocalStorage
from putplace_api.storage.s3 import PART_SIZE
from tests.api.conftest import s3_settings
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


async def test_put_many_stores_each_content_under_its_sha(storage: ContentStorage) -> None:
    contents = [os.urandom(n) for n in (0, 1, 4096, 70_000)] + [b"twice", b"twice"]
    await storage.put_many([(_sha(c), c) for c in contents])
    for c in contents:
        assert await _read(storage, _sha(c)) == c
        assert await storage.size(_sha(c)) == len(c)
    if isinstance(storage, LocalStorage):
        assert list(storage._tmp.iterdir()) == []  # no temp file left behind


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
    await storage.put_many([(_sha(c), c) for c in contents])
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


@pytest.mark.parametrize("refused_at", ["open", "write"])
async def test_local_storage_without_direct_io_writes_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused_at: str
) -> None:
    """A filesystem that refuses O_DIRECT (at open, or only at the first write) gets the same
    bytes, written buffered. Such a filesystem cannot be had here (tmpfs has direct I/O since
    Linux 6.6), so the refusal is injected: EINVAL, what Linux answers."""
    import errno
    import fcntl

    from putplace_api.storage.local import DIRECT_BLOCK

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
    monkeypatch.undo()
    assert await _read(storage, sha) == data
    assert os.listdir(tmp_path / "c" / ".tmp") == []
