"""Local filesystem content storage: ``{root}/{sha[:2]}/{sha}``, packs in ``{root}/packs/``.

Writes go to ``{root}/.tmp/`` (same filesystem), are fsynced, then renamed into place:
a crash or a disconnect never leaves a partial object under a final name. Temp files
older than an hour are swept at start-up (a younger one may belong to another worker).
Upload sessions live in ``{root}/.sessions/`` (``local_sessions.py``), which outlives restarts.

A stream is written with direct I/O where the filesystem has it, else sent on to the disk
as it goes (``_LocalWriter``): the fsync before publishing then has little left to do (for a
2 GiB upload it took 0.5 s when the whole file was left to it).
"""

from __future__ import annotations

import errno
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio.to_thread

from putplace_api.errors import BackendUnavailable
from putplace_api.storage.base import (
    SESSIONS_DIR,
    StoredObject,
    object_name,
    pack_name,
    pack_of_name,
    sha_of_name,
)
from putplace_api.storage.direct_io import DirectWrites
from putplace_api.storage.files import rename_into_place
from putplace_api.storage.local_sessions import LocalSessions

__all__ = ["LocalStorage"]

READ_CHUNK = 1024 * 1024
STALE_TEMP_SECONDS = 3600


def _write_durably(temp: Path, data: bytes, fsync: bool) -> None:
    with open(temp, "xb") as f:
        f.write(data)
        if fsync:
            os.fsync(f.fileno())


def _translate(exc: OSError) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        # Retrying later may succeed once space is freed: a 507-like condition, reported as 503.
        return BackendUnavailable("storage", "no space left on device")
    return BackendUnavailable("storage", exc.strerror or str(exc))


class _LocalWriter:
    """Writes one temp file (``direct_io``: direct I/O where the filesystem has it)."""

    def __init__(self, final: Path, temp: Path, fsync: bool) -> None:
        self._final = final
        self._temp = temp
        self._fsync = fsync
        self._file: DirectWrites | None = None
        self._done = False

    def _open(self) -> None:
        self._file = DirectWrites(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0, writeback=self._fsync)

    async def _start(self) -> None:
        try:
            await anyio.to_thread.run_sync(self._open)
        except OSError as exc:
            raise _translate(exc) from exc

    def _write(self, chunk: bytes) -> None:
        assert self._file is not None
        self._file.write(chunk)

    async def write(self, chunk: bytes) -> None:
        try:
            await anyio.to_thread.run_sync(self._write, chunk)
        except OSError as exc:
            await self.abort()
            raise _translate(exc) from exc

    def _commit(self) -> None:
        assert self._file is not None
        self._file.finish()
        if self._fsync:
            os.fsync(self._file.fd)
        self._file.close()
        rename_into_place(self._temp, self._final, self._fsync)

    async def commit(self) -> None:
        try:
            await anyio.to_thread.run_sync(self._commit)
            self._done = True
        except OSError as exc:
            await self.abort()
            raise _translate(exc) from exc

    def _abort(self) -> None:
        if self._file is not None:
            self._file.close()
        self._temp.unlink(missing_ok=True)

    async def abort(self) -> None:
        if not self._done:
            self._done = True
            # Shielded: runs even when the request task is being cancelled (client gone).
            await anyio.to_thread.run_sync(self._abort, abandon_on_cancel=False)


def _listed(name: str, st: os.stat_result) -> StoredObject:
    modified = datetime.fromtimestamp(st.st_mtime, UTC)
    return StoredObject(
        name=name, size=st.st_size, modified=modified, sha256=sha_of_name(name), pack_id=pack_of_name(name)
    )


def _list_dir(root: Path, name: str) -> list[StoredObject]:
    """The files of one ``{root}/xx/`` directory (gone entries skipped: a concurrent delete)."""
    out = []
    for entry in os.scandir(root / name):
        try:
            out.append(_listed(f"{name}/{entry.name}", entry.stat()))
        except FileNotFoundError:
            pass
    return out


class LocalStorage(LocalSessions):
    kind = "local"

    def __init__(self, root: str | Path, fsync: bool = True, sweep_temps: bool = True) -> None:
        self.root = Path(root).absolute()
        self._tmp = self.root / ".tmp"
        self._fsync = fsync
        self._sweep_temps = sweep_temps

    def _path(self, sha256: str) -> Path:
        return self.root / object_name(sha256)

    def _sweep(self) -> None:
        self._tmp.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - STALE_TEMP_SECONDS
        for entry in os.scandir(self._tmp):
            try:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
            except FileNotFoundError:
                pass

    async def open(self) -> None:
        if not self._sweep_temps:
            return
        try:
            await anyio.to_thread.run_sync(self._sweep)
        except OSError as exc:
            raise _translate(exc) from exc

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        ok = await anyio.to_thread.run_sync(os.access, self._tmp, os.W_OK)
        if not ok:
            raise BackendUnavailable("storage", f"{self._tmp} is not writable")

    def location(self, sha256: str) -> str:
        return self._path(sha256).as_uri()

    async def exists(self, sha256: str) -> bool:
        return await anyio.to_thread.run_sync(self._path(sha256).is_file)

    async def size(self, sha256: str) -> int | None:
        found = await self.stat(sha256)
        return None if found is None else found.size

    async def writer(self, sha256: str) -> _LocalWriter:
        w = _LocalWriter(self._path(sha256), self._tmp / f"{sha256}.{uuid.uuid4().hex}", self._fsync)
        await w._start()
        return w

    def read(self, sha256: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        return self._read(self._path(sha256), start, end)

    async def _read(self, path: Path, start: int, end: int | None) -> AsyncIterator[bytes]:
        try:
            f = await anyio.to_thread.run_sync(open, path, "rb")
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise _translate(exc) from exc
        try:
            await anyio.to_thread.run_sync(f.seek, start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                size = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                chunk = await anyio.to_thread.run_sync(f.read, size)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            f.close()

    async def list_objects(self) -> AsyncIterator[StoredObject]:
        # One thread hop per top-level directory; temp files (.tmp/) are writes in progress.
        try:
            top = await anyio.to_thread.run_sync(lambda: sorted(os.scandir(self.root), key=lambda e: e.name))
            for entry in top:
                if entry.name in (self._tmp.name, SESSIONS_DIR):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    for item in await anyio.to_thread.run_sync(_list_dir, self.root, entry.name):
                        yield item
                else:
                    yield _listed(entry.name, await anyio.to_thread.run_sync(entry.stat))
        except FileNotFoundError:
            return  # no root yet: nothing stored
        except OSError as exc:
            raise _translate(exc) from exc

    async def stat(self, sha256: str) -> StoredObject | None:
        return await self._stat(object_name(sha256))

    async def _stat(self, name: str) -> StoredObject | None:
        try:
            st = await anyio.to_thread.run_sync(os.stat, self.root / name)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _translate(exc) from exc
        return _listed(name, st)

    async def delete(self, sha256: str) -> bool:
        return await self._delete(self._path(sha256))

    async def _delete(self, path: Path) -> bool:
        try:
            await anyio.to_thread.run_sync(os.unlink, path)
            return True
        except FileNotFoundError:
            return False

    # -- packs -----------------------------------------------------------------------------
    def pack_location(self, pack_id: str) -> str:
        return (self.root / pack_name(pack_id)).as_uri()

    def _write_pack(self, pack_id: str, data: bytes) -> None:
        # One file and one rename for the whole batch: what packs are for.
        temp, final = self._tmp / f"pack-{pack_id}", self.root / pack_name(pack_id)
        try:
            _write_durably(temp, data, self._fsync)
            rename_into_place(temp, final, self._fsync)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    async def write_pack(self, pack_id: str, data: bytes) -> None:
        try:
            await anyio.to_thread.run_sync(self._write_pack, pack_id, data, abandon_on_cancel=False)
        except OSError as exc:
            raise _translate(exc) from exc

    def read_pack(self, pack_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        return self._read(self.root / pack_name(pack_id), start, end)

    async def stat_pack(self, pack_id: str) -> StoredObject | None:
        return await self._stat(pack_name(pack_id))

    async def delete_pack(self, pack_id: str) -> bool:
        return await self._delete(self.root / pack_name(pack_id))
