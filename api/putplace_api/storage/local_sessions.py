"""Upload sessions on local disk: one sparse file per session, written at offsets.

``{root}/.sessions/{id}.data`` is created at the content's full size (sparse: no blocks until
written); each chunk is written at its offset, made durable, and only then appended to
``{id}.held`` (one number a line, O_APPEND) -- so a chunk listed there is on disk whatever
crashes, and a chunk cut short is simply not listed. Chunks are written with direct I/O where
the filesystem has it (``direct_io``), as single uploads are. ``assemble`` hashes the file in place and
``commit`` renames it to the content's name: no copy, and never a name showing unverified bytes.

Writers hold a shared ``flock`` on the data file, ``assemble`` an exclusive one until commit or
abort: a chunk still being written when a session completes waits, then finds its file gone
(renamed: another inode under the path) and writes nothing into the published content.
``LocalStorage`` mixes this in; the directory is outside what ``list_objects`` lists.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import anyio.to_thread

from putplace_api.storage.base import SESSIONS_DIR, SessionData, object_name
from putplace_api.storage.direct_io import DirectWrites, read_blocks
from putplace_api.storage.files import rename_into_place

__all__ = ["LocalSessions"]

WRITE_BLOCK = 1024 * 1024  # bytes gathered before one write: one thread hop per MiB, not per piece


class _Assembled:
    def __init__(self, data: BinaryIO, data_path: Path, held: Path, root: Path, fsync: bool) -> None:
        self._data = data  # open, holding the exclusive lock until commit or abort
        self._data_path = data_path
        self._held = held
        self._root = root
        self._final = root  # known once hashed
        self._fsync = fsync
        self.sha256 = ""
        self.size = 0
        self.head = b""

    def hash(self, head_bytes: int) -> None:
        digest = hashlib.sha256()
        for block in read_blocks(self._data_path):
            if not self.head:
                self.head = bytes(block[:head_bytes])
            digest.update(block)
            self.size += len(block)
        self.sha256 = digest.hexdigest()
        self._final = self._root / object_name(self.sha256)

    def _commit(self) -> None:
        if self._fsync:
            os.fsync(self._data.fileno())
        rename_into_place(self._data_path, self._final, self._fsync)
        self._held.unlink(missing_ok=True)
        self._data.close()  # releases the lock: waiting writers find another inode, or none

    async def commit(self) -> None:
        await anyio.to_thread.run_sync(self._commit, abandon_on_cancel=False)

    def _abort(self) -> None:
        if self._data.closed:
            return
        self._data_path.unlink(missing_ok=True)
        self._held.unlink(missing_ok=True)
        self._data.close()

    async def abort(self) -> None:
        await anyio.to_thread.run_sync(self._abort, abandon_on_cancel=False)


async def _blocks(body: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """The body's pieces in groups of about WRITE_BLOCK bytes, not joined: the writer copies
    them into its aligned block anyway."""
    pieces: list[bytes] = []
    gathered = 0
    async for piece in body:
        pieces.append(piece)
        gathered += len(piece)
        if gathered >= WRITE_BLOCK:
            yield pieces
            pieces, gathered = [], 0
    if pieces:
        yield pieces


def _write_pieces(writer: DirectWrites, pieces: list[bytes]) -> None:
    for piece in pieces:
        writer.write(piece)


def _open_locked(path: Path, exclusive: bool) -> BinaryIO:
    """The session's data file, locked; FileNotFoundError once it was completed or aborted."""
    f = open(path, "r+b")  # noqa: SIM115 - returned open, closed by the caller
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        if os.stat(path).st_ino != os.fstat(f.fileno()).st_ino:
            raise FileNotFoundError(path)  # renamed into place (or replaced) while we waited
    except BaseException:
        f.close()
        raise
    return f


class LocalSessions:
    root: Path
    _fsync: bool

    @property
    def _sessions(self) -> Path:
        return self.root / SESSIONS_DIR

    def _files(self, session_id: str) -> tuple[Path, Path]:
        return self._sessions / f"{session_id}.data", self._sessions / f"{session_id}.held"

    def _begin(self, session_id: str, size: int) -> None:
        self._sessions.mkdir(parents=True, exist_ok=True)
        data, held = self._files(session_id)
        with open(data, "xb") as f:
            f.truncate(size)  # sparse: blocks come with the chunks
        held.touch()

    async def begin_session(self, session_id: str, size: int) -> str:
        await anyio.to_thread.run_sync(self._begin, session_id, size)
        return ""

    def _held(self, session_id: str) -> set[int]:
        data, held = self._files(session_id)
        if not data.exists():
            raise FileNotFoundError(data)
        numbers = set()
        for line in held.read_text().splitlines():
            if line.isdigit():  # a line cut short by a crash is not a chunk
                numbers.add(int(line))
        return numbers

    async def held_chunks(self, session_id: str, ref: str) -> set[int]:
        return await anyio.to_thread.run_sync(self._held, session_id)

    def _mark_held(self, session_id: str, number: int) -> None:
        fd = os.open(self._files(session_id)[1], os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, f"{number}\n".encode())
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _open_chunk(self, session_id: str, offset: int) -> tuple[BinaryIO, DirectWrites]:
        """The session's file locked (shared), and a writer at ``offset`` in it."""
        data_path = self._files(session_id)[0]
        lock = _open_locked(data_path, False)
        try:
            # By path again: while the shared lock is held, completing cannot rename it away.
            return lock, DirectWrites(data_path, os.O_WRONLY, offset, writeback=self._fsync)
        except BaseException:
            lock.close()
            raise

    def _finish_chunk(self, writer: DirectWrites) -> None:
        writer.finish()
        if self._fsync:
            os.fdatasync(writer.fd)

    async def write_chunk(
        self, session_id: str, ref: str, number: int, offset: int, body: AsyncIterator[bytes]
    ) -> None:
        lock, writer = await anyio.to_thread.run_sync(self._open_chunk, session_id, offset)
        try:
            async for pieces in _blocks(body):
                await anyio.to_thread.run_sync(_write_pieces, writer, pieces)
            await anyio.to_thread.run_sync(self._finish_chunk, writer)
            await anyio.to_thread.run_sync(self._mark_held, session_id, number)
        finally:

            def close() -> None:
                writer.close()
                lock.close()

            await anyio.to_thread.run_sync(close, abandon_on_cancel=False)

    def _assemble(self, session_id: str, head_bytes: int) -> _Assembled:
        data_path, held = self._files(session_id)
        f = _open_locked(data_path, True)
        assembled = _Assembled(f, data_path, held, self.root, self._fsync)
        try:
            assembled.hash(head_bytes)
        except BaseException:
            f.close()
            raise
        return assembled

    async def assemble(self, session_id: str, ref: str, chunks: int, head_bytes: int) -> _Assembled:
        return await anyio.to_thread.run_sync(self._assemble, session_id, head_bytes, abandon_on_cancel=False)

    def _abort_session(self, session_id: str) -> None:
        for path in self._files(session_id):
            path.unlink(missing_ok=True)

    async def abort_session(self, session_id: str, ref: str) -> None:
        await anyio.to_thread.run_sync(self._abort_session, session_id, abandon_on_cancel=False)

    def _list_sessions(self) -> list[SessionData]:
        found = []
        try:
            entries = list(os.scandir(self._sessions))
        except FileNotFoundError:
            return []
        for entry in entries:
            if not entry.name.endswith(".data"):
                continue
            try:
                modified = max(entry.stat().st_mtime, os.stat(entry.path[: -len(".data")] + ".held").st_mtime)
            except FileNotFoundError:
                continue  # completed or aborted meanwhile
            found.append(SessionData(entry.name[: -len(".data")], "", datetime.fromtimestamp(modified, UTC)))
        return found

    async def list_sessions(self) -> AsyncIterator[SessionData]:
        for found in await anyio.to_thread.run_sync(self._list_sessions):
            yield found
