"""Receiving content: stream to storage while hashing, verify, then publish.

The order makes every failure safe: bytes go to a storage writer that shows nothing until
commit; the hash and size are checked before commit; the content record is marked stored
only after the object is committed. So metadata never claims content that is not there,
and a crash at any point leaves at worst an unreferenced object that the next identical
upload overwrites.

A key with quotas is checked before anything is received, and holds what it may store until
the content is marked stored (``putplace_api.quotas``); re-sending a content already stored
costs nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio
import anyio.to_thread

from putplace_api import metrics
from putplace_api.auth import Principal
from putplace_api.errors import HashMismatch, NotFound, PayloadTooLarge, UnsupportedMediaType
from putplace_api.mime import SNIFF_BYTES, detect_mime, mime_allowed
from putplace_api.quotas import Quotas, bytes_refusal, has_quota
from putplace_api.storage.base import ContentStorage
from putplace_api.storage.packs import put_pack
from putplace_api.store.base import KeyUsage, MetadataStore, StoredContent
from putplace_client.models import BatchUploadItem, UploadStatus, is_sha256

__all__ = ["UploadResult", "receive_batch", "receive_content", "WRITE_BLOCK"]

# The upload is a pipeline: the event loop receives the body and gathers it into blocks of
# WRITE_BLOCK bytes; one task hashes the blocks in a worker thread (hashlib releases the GIL),
# another hands them to storage, each at its own pace, while the loop already receives the
# next ones. (When one task did both, a block's hash waited for the disk to take the block
# before it: 2.45-2.82 s for 2 GiB against 2.32-2.40 s apart, idle machine.) At most
# PIPELINE_BLOCKS blocks wait before each task, which bounds memory per upload (~20 MiB, and
# the server's read-ahead, putplace_api.http_protocol.BODY_BUFFER, which already lets the
# socket run ahead: a second waiting block only raised the peak RSS, by ~10 MiB). The block
# matches the messages that read-ahead gives (a few MiB): one block is then mostly one
# message, with no copy, and two thread hops per block cost little.
WRITE_BLOCK = 4 * 1024 * 1024
PIPELINE_BLOCKS = 1


@dataclass(frozen=True, slots=True)
class UploadResult:
    sha256: str
    size: int
    already_stored: bool
    mime_type: str | None


def _storing(quotas: Quotas | None, key: Principal | None, held: KeyUsage) -> AbstractAsyncContextManager[None]:
    """Where a content is marked stored: inside its key's quota lock when it holds a quota."""
    if quotas is None or key is None or not held.files:
        return nullcontext()
    return quotas.storing(key, held)


@asynccontextmanager
async def _given_back_on_error(quotas: Quotas | None, key: Principal | None, held: KeyUsage) -> AsyncIterator[None]:
    """Where a held content is received and written: nothing is stored if this fails, so the hold goes."""
    try:
        yield
    except BaseException:
        if quotas is not None and key is not None and held.files:
            quotas.release(key, held)
        raise


async def receive_content(
    *,
    store: MetadataStore,
    storage: ContentStorage,
    sha256: str,
    chunks: AsyncIterator[bytes],
    max_bytes: int | None,
    allowed_mime: list[str],
    key: Principal | None = None,
    quotas: Quotas | None = None,
) -> UploadResult:
    content = await store.get_content(sha256)
    if content is not None and key is not None and key.visible is not None:
        if not await store.visible_shas({sha256}, key.visible):
            content = None  # announced only outside the key's limits: as if not announced (nothing leaks)
    if content is None:
        metrics.UPLOADS.labels("not_announced").inc()
        raise NotFound(f"No metadata announced for SHA256 {sha256}; call /put_file first")
    if content.stored:
        # Nothing to store, but the bytes are still checked: a client must learn that it sent
        # the wrong ones, whether or not the server already holds the right ones.
        size = await _verify_only(sha256, chunks, content.size)
        metrics.UPLOADS.labels("already_stored").inc()
        return UploadResult(sha256, size, True, content.mime_type)
    if max_bytes is not None and content.size > max_bytes:
        metrics.UPLOADS.labels("too_large").inc()
        raise PayloadTooLarge(f"Content of {content.size} bytes exceeds the upload limit of {max_bytes} bytes")
    held, cap = KeyUsage(), None
    if quotas is not None and key is not None and has_quota(key):
        (refused,), used = await quotas.admit(store, key, [content.size])
        if refused is not None:
            metrics.UPLOADS.labels("quota_exceeded").inc()
            raise PayloadTooLarge(refused)
        held = KeyUsage(1, content.size)
        if key.max_bytes is not None:  # the announced size is the client's word: the bytes count
            room = key.max_bytes - used.bytes
            cap = (room, bytes_refusal(key.max_bytes, used, f"an upload of over {room} bytes"))
    async with _given_back_on_error(quotas, key, held):
        size, mime = await _store_stream(storage, sha256, chunks, max_bytes, allowed_mime, cap)
    async with _storing(quotas, key, held):
        await store.mark_stored(
            sha256, size, mime, storage.location(sha256), datetime.now(UTC), key.key_id if key is not None else None
        )
    metrics.UPLOADS.labels("stored").inc()
    metrics.UPLOADED_BYTES.inc(size)
    return UploadResult(sha256, size, False, mime)


async def _store_stream(
    storage: ContentStorage,
    sha256: str,
    chunks: AsyncIterator[bytes],
    max_bytes: int | None,
    allowed_mime: list[str],
    cap: tuple[int, str] | None,
) -> tuple[int, str]:
    """Stream, hash and commit one content; its size and MIME type. ``cap``: the bytes a quota
    leaves, and the refusal past them."""
    digest = hashlib.sha256()
    writer = await storage.writer(sha256)
    size = 0
    head = bytearray()
    mime: str | None = None
    to_hash, hash_queue = anyio.create_memory_object_stream[bytes](PIPELINE_BLOCKS)
    to_write, write_queue = anyio.create_memory_object_stream[bytes](PIPELINE_BLOCKS)

    async def hash_blocks() -> None:
        async with hash_queue:
            async for block in hash_queue:
                await anyio.to_thread.run_sync(digest.update, block)

    async def write_blocks() -> None:
        async with write_queue:
            async for block in write_queue:
                await writer.write(block)

    async def send(pieces: list[bytes]) -> None:
        block = b"".join(pieces)  # one piece (the usual case with the read-ahead): no copy
        await to_hash.send(block)
        await to_write.send(block)

    try:
        try:
            async with anyio.create_task_group() as pipeline:
                pipeline.start_soon(hash_blocks)
                pipeline.start_soon(write_blocks)
                async with to_hash, to_write:
                    pieces: list[bytes] = []
                    gathered = 0
                    async for chunk in chunks:
                        size += len(chunk)
                        if max_bytes is not None and size > max_bytes:
                            metrics.UPLOADS.labels("too_large").inc()
                            raise PayloadTooLarge(f"Upload exceeds the limit of {max_bytes} bytes")
                        if cap is not None and size > cap[0]:
                            metrics.UPLOADS.labels("quota_exceeded").inc()
                            raise PayloadTooLarge(cap[1])
                        if mime is None:
                            head += chunk[: SNIFF_BYTES - len(head)]
                            if len(head) >= SNIFF_BYTES:
                                mime = _check_mime(bytes(head), allowed_mime)
                        pieces.append(chunk)
                        gathered += len(chunk)
                        if gathered >= WRITE_BLOCK:
                            await send(pieces)
                            pieces, gathered = [], 0
                    if pieces:
                        await send(pieces)
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        if mime is None:
            mime = _check_mime(bytes(head), allowed_mime)
        calculated = digest.hexdigest()
        if calculated != sha256:
            metrics.UPLOADS.labels("hash_mismatch").inc()
            raise HashMismatch(f"File content SHA256 ({calculated}) does not match provided hash ({sha256})")
        await writer.commit()
    except BaseException:
        await writer.abort()
        raise
    return size, mime


async def _verify_only(sha256: str, chunks: AsyncIterator[bytes], expected_size: int) -> int:
    """Hash an upload of content already stored, storing nothing; its size, or BadRequest for
    bytes that are not that content (refused as soon as the body outgrows it)."""
    digest = hashlib.sha256()
    size = 0
    pieces: list[bytes] = []
    gathered = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > expected_size:
            break
        pieces.append(chunk)
        gathered += len(chunk)
        if gathered >= WRITE_BLOCK:
            await anyio.to_thread.run_sync(digest.update, b"".join(pieces))
            pieces, gathered = [], 0
    if pieces:
        await anyio.to_thread.run_sync(digest.update, b"".join(pieces))
    calculated = digest.hexdigest()
    if size != expected_size or calculated != sha256:
        metrics.UPLOADS.labels("hash_mismatch").inc()
        shown = calculated if size <= expected_size else f"more than the {expected_size} bytes stored"
        raise HashMismatch(f"File content SHA256 ({shown}) does not match provided hash ({sha256})")
    return size


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The error that stopped the pipeline, unwrapped from anyio's exception group, so that
    a PutPlaceError still becomes its 4xx/503 answer."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, anyio.get_cancelled_exc_class()):
            return exc
    return group.exceptions[0]


def _check_mime(head: bytes, allowed: list[str]) -> str:
    mime = detect_mime(head)
    if not mime_allowed(mime, allowed):
        metrics.UPLOADS.labels("unsupported_type").inc()
        raise UnsupportedMediaType(f"Content type {mime} is not allowed on this server")
    return mime


async def receive_batch(
    *,
    store: MetadataStore,
    storage: ContentStorage,
    parts: list[tuple[str, bytes]],
    max_bytes: int | None,
    allowed_mime: list[str],
    key: Principal | None = None,
    quotas: Quotas | None = None,
) -> list[BatchUploadItem]:
    """Many small contents in one request (the body is already in memory, under the request cap).

    Each part is judged on its own -- one bad part never fails the others -- and the same order
    of safety holds as for one upload: verify, store durably (all in one pack,
    ``putplace_api.storage.packs``), then mark stored.
    """
    known = await store.contents({name for name, _ in parts if is_sha256(name)})
    if key is not None and key.visible is not None and known:
        # Announced only outside the key's limits: as if not announced (nothing leaks).
        allowed = await store.visible_shas(set(known), key.visible)
        known = {sha: row for sha, row in known.items() if sha in allowed}
    outcome: dict[str, UploadStatus] = {}
    candidates: list[tuple[str, bytes]] = []
    stored: list[tuple[str, bytes]] = []
    for name, data in parts:
        if name in outcome:
            continue  # a repeated part is answered like its first occurrence
        row = known.get(name)
        if not is_sha256(name):
            outcome[name] = UploadStatus.INVALID
        elif row is None:
            outcome[name] = UploadStatus.NOT_ANNOUNCED
        elif row.stored:
            outcome[name] = UploadStatus.EXISTS  # unless its bytes are not that content (below)
            stored.append((name, data))
        elif max_bytes is not None and len(data) > max_bytes:
            outcome[name] = UploadStatus.TOO_LARGE
        else:
            outcome[name] = UploadStatus.UPLOADED  # unless the checks below say otherwise
            candidates.append((name, data))

    def verify() -> list[tuple[str, bytes, str | None]]:
        for name, data in stored:
            if hashlib.sha256(data).hexdigest() != name:
                outcome[name] = UploadStatus.MISMATCH
        good = []
        for name, data in candidates:
            if hashlib.sha256(data).hexdigest() != name:
                outcome[name] = UploadStatus.MISMATCH
                continue
            # Sniffing costs more than hashing a small file: only an allow-list needs it now;
            # otherwise the type is found when the content is first read.
            mime = detect_mime(data[:SNIFF_BYTES]) if allowed_mime else None
            if mime is not None and not mime_allowed(mime, allowed_mime):
                outcome[name] = UploadStatus.UNSUPPORTED_TYPE
                continue
            good.append((name, data, mime))
        return good

    verified = await anyio.to_thread.run_sync(verify)
    held = KeyUsage()
    if quotas is not None and key is not None and has_quota(key) and verified:
        refusals, _ = await quotas.admit(store, key, [len(data) for _, data, _ in verified])
        for (name, _, _), refused in zip(verified, refusals, strict=True):  # in the order sent
            if refused is not None:
                outcome[name] = UploadStatus.QUOTA_EXCEEDED
        verified = [v for v, refused in zip(verified, refusals, strict=True) if refused is None]
        held = KeyUsage(len(verified), sum(len(data) for _, data, _ in verified))
    if verified:
        async with _given_back_on_error(quotas, key, held):
            placed = await put_pack(storage, [(name, data) for name, data, _ in verified])
        async with _storing(quotas, key, held):
            await store.mark_stored_many(
                [
                    StoredContent(
                        p.sha256,
                        p.size,
                        mime,
                        p.storage_path,
                        key.key_id if key else None,
                        p.pack_id,
                        p.offset,
                    )
                    for p, (_, _, mime) in zip(placed, verified, strict=True)
                ],
                datetime.now(UTC),
            )
        metrics.UPLOADED_BYTES.inc(sum(len(data) for _, data, _ in verified))
    for status in outcome.values():
        metrics.UPLOADS.labels(_METRIC_OUTCOME.get(status, status.value)).inc()
    # Constructed: every value is the server's own (a part's name is any string, as the model says).
    return [BatchUploadItem.model_construct(sha256=name, status=outcome[name], size=len(data)) for name, data in parts]


_METRIC_OUTCOME = {
    UploadStatus.UPLOADED: "stored",
    UploadStatus.EXISTS: "already_stored",
    UploadStatus.MISMATCH: "hash_mismatch",
    UploadStatus.TOO_LARGE: "too_large",
}
