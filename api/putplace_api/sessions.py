"""Upload sessions: a large content sent in chunks, in parallel, in any order, resumable.

A session is opened for a content its key may upload (announced by /put_file, visible to the
key, not stored yet, within the upload limit and the key's quota: the rules of
``uploads.receive_content``). Its record (store: ``SessionStore``) says what is uploaded and
whose it is; its chunks live in storage (``ContentStorage`` sessions), which also answers which
chunks are held -- so a restart of the API or of the client loses no chunk written completely.
Completing assembles and hashes the whole: a mismatch discards the session (400), a match is
published atomically and marked stored exactly as an upload is. Only the creating key, or an
admin, may use a session; to any other it does not exist.

An idle session expires ``upload_session_ttl_seconds`` after its last use: ``Sessions.run``
(a task of every API process) and ``putplace-api gc`` discard it. Called by
``routes/sessions.py``; no FastAPI here.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta

import anyio

from putplace_api import metrics
from putplace_api.auth import Principal
from putplace_api.errors import (
    BadRequest,
    Conflict,
    HashMismatch,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    log_background_failure,
)
from putplace_api.mime import SNIFF_BYTES, detect_mime, mime_allowed
from putplace_api.quotas import Quotas, has_quota
from putplace_api.settings import Settings
from putplace_api.storage.base import ContentStorage
from putplace_api.store.base import KeyUsage, MetadataStore, SessionRow, SessionStore
from putplace_client.models import CHUNK_SHA256_HEADER, UPLOAD_ID_RE, Scope, UploadSession

__all__ = ["Sessions", "Completed", "SessionMismatch", "chunk_size_for", "expire_sessions", "MAX_PARTS"]

log = logging.getLogger("putplace.sessions")

MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload
MIB = 1024 * 1024
EXPIRY_BATCH = 100
# Chunks one process receives at once: on S3 each is held in memory while its part is sent,
# so this (x the chunk size) bounds that memory. More wait, their bodies unread.
CHUNK_SLOTS = 4


def chunk_size_for(size: int, configured: int) -> int:
    """The configured chunk size, or larger (whole MiB) when the content would need more parts."""
    needed = -(-size // MAX_PARTS)
    return max(configured, -(-needed // MIB) * MIB)


def _chunks(row: SessionRow) -> int:
    return -(-row.size // row.chunk_size)


class SessionMismatch(HashMismatch):
    """The assembled bytes are not the session's content (which ``sha256`` names)."""

    def __init__(self, sha256: str, detail: str) -> None:
        super().__init__(detail)
        self.sha256 = sha256


class Completed:
    """A session completed: the content is stored (``mime_type`` as detected)."""

    def __init__(self, row: SessionRow, mime_type: str) -> None:
        self.sha256 = row.sha256
        self.size = row.size
        self.mime_type = mime_type


async def _checked(body: AsyncIterator[bytes], length: int, sha256: str | None) -> AsyncIterator[bytes]:
    """The chunk's bytes, refused (BadRequest, raised inside storage's write) if there are more
    or fewer than ``length`` or, given ``sha256``, they do not hash to it."""
    digest = hashlib.sha256() if sha256 is not None else None
    size = 0
    async for piece in body:
        size += len(piece)
        metrics.SESSION_RECEIVED_BYTES.inc(len(piece))
        if size > length:
            raise BadRequest(f"The chunk is larger than its {length} bytes")
        if digest is not None:
            digest.update(piece)
        yield piece
    if size != length:
        raise BadRequest(f"The chunk has {size} bytes; it must have {length}")
    if digest is not None and digest.hexdigest() != sha256:
        raise BadRequest(f"The chunk's bytes do not hash to its {CHUNK_SHA256_HEADER}")


async def expire_sessions(store: SessionStore, storage: ContentStorage, now: datetime) -> list[str]:
    """Discard every session expired at ``now`` (its chunks, then its record); their ids."""
    done = []
    while rows := await store.expired_sessions(now, EXPIRY_BATCH):
        for row in rows:
            await storage.abort_session(row.id, row.storage_ref)
            if await store.delete_session(row.id):
                metrics.SESSIONS.labels("expired").inc()
                done.append(row.id)
        if len(rows) < EXPIRY_BATCH:
            break
    return done


class Sessions:
    def __init__(self, store: MetadataStore, storage: ContentStorage, settings: Settings, quotas: Quotas) -> None:
        self._store = store
        self._sessions: SessionStore = store  # type: ignore[assignment]  # both stores implement it
        self._storage = storage
        self._settings = settings
        self._quotas = quotas
        self._slots = asyncio.Semaphore(CHUNK_SLOTS)

    @property
    def _ttl(self) -> timedelta:
        return timedelta(seconds=self._settings.upload_session_ttl_seconds)

    def _answer(self, row: SessionRow, held: set[int]) -> UploadSession:
        return UploadSession(
            upload_id=row.id,
            sha256=row.sha256,
            size=row.size,
            chunk_size=row.chunk_size,
            chunks=_chunks(row),
            held=sorted(held),
            expires_at=row.expires_at,
        )

    async def create(self, key: Principal, sha256: str, size: int) -> UploadSession:
        content = await self._store.get_content(sha256)
        if (
            content is not None
            and key.visible is not None
            and not await self._store.visible_shas({sha256}, key.visible)
        ):
            content = None  # announced only outside the key's limits: as if not announced
        if content is None:
            metrics.SESSIONS.labels("refused").inc()
            raise NotFound(f"No metadata announced for SHA256 {sha256}; call /put_file first")
        if content.stored:
            metrics.SESSIONS.labels("refused").inc()
            raise Conflict(f"Content {sha256} is stored already: nothing to upload")
        if size != content.size:
            metrics.SESSIONS.labels("refused").inc()
            raise Conflict(f"Content {sha256} was announced with {content.size} bytes, not {size}")
        limit = self._settings.max_upload_bytes
        if limit is not None and size > limit:
            metrics.SESSIONS.labels("refused").inc()
            raise PayloadTooLarge(f"Content of {size} bytes exceeds the upload limit of {limit} bytes")
        if has_quota(key):  # checked now, and held again at completion (a session outlives a process)
            (refused,), _ = await self._quotas.admit(self._store, key, [size])
            if refused is not None:
                metrics.SESSIONS.labels("refused").inc()
                raise PayloadTooLarge(refused)
            self._quotas.release(key, KeyUsage(1, size))
        now = datetime.now(UTC)
        session_id = uuid.uuid4().hex
        ref = await self._storage.begin_session(session_id, size)
        row = SessionRow(
            id=session_id,
            sha256=sha256,
            size=size,
            chunk_size=chunk_size_for(size, self._settings.upload_chunk_bytes),
            key_id=key.key_id,
            storage_ref=ref,
            created_at=now,
            expires_at=now + self._ttl,
        )
        try:
            await self._sessions.insert_session(row)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._storage.abort_session(session_id, ref)
            raise
        metrics.SESSIONS.labels("created").inc()
        return self._answer(row, set())

    async def _row(self, key: Principal, upload_id: str) -> SessionRow:
        """The session, if it is the key's (or the key is an admin's) and alive; else 404."""
        row = await self._sessions.get_session(upload_id) if UPLOAD_ID_RE.match(upload_id) else None
        if row is None or (row.key_id != key.key_id and not key.allows(Scope.ADMIN)):
            raise NotFound(f"No upload session {upload_id}")
        if row.expires_at <= datetime.now(UTC):
            await self._discard(row, "expired")
            raise NotFound(f"Upload session {upload_id} has expired")
        return row

    async def _held(self, row: SessionRow) -> set[int]:
        try:
            return await self._storage.held_chunks(row.id, row.storage_ref)
        except FileNotFoundError:
            await self._discard(row, "lost")
            raise NotFound(f"Upload session {row.id} is gone: create a new one") from None

    async def _discard(self, row: SessionRow, outcome: str) -> None:
        with anyio.CancelScope(shield=True):
            await self._storage.abort_session(row.id, row.storage_ref)
            if await self._sessions.delete_session(row.id):
                metrics.SESSIONS.labels(outcome).inc()

    async def status(self, key: Principal, upload_id: str) -> UploadSession:
        row = await self._row(key, upload_id)
        return self._answer(row, await self._held(row))

    async def receive_chunk(
        self, key: Principal, upload_id: str, number: int, body: AsyncIterator[bytes], sha256: str | None
    ) -> int:
        """Write chunk ``number``; its size. A chunk held already is not written again."""
        row = await self._row(key, upload_id)
        if not 0 <= number < _chunks(row):
            raise BadRequest(f"Chunk {number} is out of range: this session has chunks 0 to {_chunks(row) - 1}")
        start = number * row.chunk_size
        length = min(row.size, start + row.chunk_size) - start
        if number in await self._held(row):
            metrics.SESSION_CHUNKS.labels("held_already").inc()
            return length
        metrics.SESSION_CHUNKS_IN_PROGRESS.inc()
        try:
            async with self._slots:
                await self._storage.write_chunk(row.id, row.storage_ref, number, start, _checked(body, length, sha256))
        except FileNotFoundError:
            raise NotFound(f"Upload session {upload_id} is gone") from None
        except BadRequest:
            metrics.SESSION_CHUNKS.labels("refused").inc()
            raise
        finally:
            metrics.SESSION_CHUNKS_IN_PROGRESS.dec()
        metrics.SESSION_CHUNKS.labels("held").inc()
        metrics.SESSION_HELD_BYTES.inc(length)
        await self._sessions.touch_session(row.id, datetime.now(UTC) + self._ttl)
        return length

    async def complete(self, key: Principal, upload_id: str) -> Completed:
        """Assemble, verify and publish; runs to its end even if the client goes away meanwhile
        (it may take a while: the whole content is hashed again)."""
        with anyio.CancelScope(shield=True):
            completed = await self._complete(key, upload_id)
        return completed

    async def _complete(self, key: Principal, upload_id: str) -> Completed:
        row = await self._row(key, upload_id)
        if await self._storage.size(row.sha256) == row.size:
            return await self._found_published(key, row)
        missing = sorted(set(range(_chunks(row))) - await self._held(row))
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (", ..." if len(missing) > 20 else "")
            raise BadRequest(f"Upload session {upload_id} lacks {len(missing)} chunks: {shown}")
        held = KeyUsage()
        if has_quota(key):
            (refused,), _ = await self._quotas.admit(self._store, key, [row.size])
            if refused is not None:
                raise PayloadTooLarge(refused)
            held = KeyUsage(1, row.size)
        try:
            mime = await self._publish(row)
        except BaseException:
            if held.files:
                self._quotas.release(key, held)
            raise
        async with self._quotas.storing(key, held) if held.files else nullcontext():
            await self._store.mark_stored(
                row.sha256, row.size, mime, self._storage.location(row.sha256), datetime.now(UTC), key.key_id
            )
        await self._sessions.delete_session(row.id)
        metrics.SESSIONS.labels("completed").inc()
        metrics.UPLOADS.labels("stored").inc()
        metrics.UPLOADED_BYTES.inc(row.size)
        return Completed(row, mime)

    async def _found_published(self, key: Principal, row: SessionRow) -> Completed:
        """The content is under its name already: published by an earlier completion that the
        API did not get to record (it was stopped), or by another upload. Only verified bytes
        ever get a content's name, so what is left is to mark it stored and end the session."""
        head = [piece async for piece in self._storage.read(row.sha256, 0, SNIFF_BYTES)]
        mime = detect_mime(b"".join(head))
        await self._store.mark_stored(
            row.sha256, row.size, mime, self._storage.location(row.sha256), datetime.now(UTC), key.key_id
        )
        await self._discard(row, "completed")
        return Completed(row, mime)

    async def _publish(self, row: SessionRow) -> str:
        """Assemble the session's chunks, check them, make them the content; the MIME type."""
        try:
            assembled = await self._storage.assemble(row.id, row.storage_ref, _chunks(row), SNIFF_BYTES)
        except FileNotFoundError:
            await self._discard(row, "lost")
            raise NotFound(f"Upload session {row.id} is gone: create a new one") from None
        try:
            if assembled.sha256 != row.sha256 or assembled.size != row.size:
                metrics.UPLOADS.labels("hash_mismatch").inc()
                raise SessionMismatch(
                    row.sha256,
                    f"File content SHA256 ({assembled.sha256}) does not match provided hash ({row.sha256}); "
                    "the session is discarded",
                )
            mime = detect_mime(assembled.head)
            if not mime_allowed(mime, self._settings.allowed_mime_types):
                metrics.UPLOADS.labels("unsupported_type").inc()
                raise UnsupportedMediaType(f"Content type {mime} is not allowed on this server")
            await assembled.commit()
        except (HashMismatch, UnsupportedMediaType):
            await assembled.abort()
            await self._discard(row, "mismatch")
            raise
        except BaseException:
            await assembled.abort()
            raise
        return mime

    async def abort(self, key: Principal, upload_id: str) -> None:
        row = await self._row(key, upload_id)
        await self._discard(row, "aborted")

    async def run(self, every: float) -> None:
        """Discard expired sessions every ``every`` seconds (each API process does; discarding
        one twice is harmless)."""
        while True:
            await asyncio.sleep(every)
            try:
                await expire_sessions(self._sessions, self._storage, datetime.now(UTC))
            except Exception as exc:  # a backend outage must not end the loop
                log_background_failure(log, "could not expire upload sessions", exc)
