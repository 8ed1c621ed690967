"""Receiving content: stream to storage while hashing, verify, then publish.

The order makes every failure safe: bytes go to a storage writer that shows nothing until
commit; the hash and size are checked before commit; the content record is marked stored
only after the object is committed. So metadata never claims content that is not there,
and a crash at any point leaves at worst an unreferenced object that the next identical
upload overwrites.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio
import anyio.to_thread

from putplace_api import metrics
from putplace_api.errors import BadRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
from putplace_api.mime import SNIFF_BYTES, detect_mime, mime_allowed
from putplace_api.storage.base import ContentStorage
from putplace_api.store.base import MetadataStore

__all__ = ["UploadResult", "receive_content", "WRITE_BLOCK"]

# The upload is a pipeline: the event loop receives the body and gathers it into blocks of
# WRITE_BLOCK bytes; a second task hashes each block in a worker thread (hashlib releases
# the GIL) and hands it to storage, while the loop already receives the next ones. At most
# PIPELINE_BLOCKS blocks wait between the two, which bounds memory per upload (~5 MiB).
WRITE_BLOCK = 1024 * 1024
PIPELINE_BLOCKS = 4


@dataclass(frozen=True, slots=True)
class UploadResult:
    sha256: str
    size: int
    already_stored: bool
    mime_type: str | None


async def receive_content(
    *,
    store: MetadataStore,
    storage: ContentStorage,
    sha256: str,
    chunks: AsyncIterator[bytes],
    max_bytes: int | None,
    allowed_mime: list[str],
) -> UploadResult:
    content = await store.get_content(sha256)
    if content is None:
        metrics.UPLOADS.labels("not_announced").inc()
        raise NotFound(f"No metadata announced for SHA256 {sha256}; call /put_file first")
    if content.stored:
        metrics.UPLOADS.labels("already_stored").inc()
        return UploadResult(sha256, content.size, True, content.mime_type)
    if max_bytes is not None and content.size > max_bytes:
        metrics.UPLOADS.labels("too_large").inc()
        raise PayloadTooLarge(f"Content of {content.size} bytes exceeds the upload limit of {max_bytes} bytes")

    digest = hashlib.sha256()
    writer = await storage.writer(sha256)
    size = 0
    head = bytearray()
    mime: str | None = None
    send, receive = anyio.create_memory_object_stream[list[bytes]](PIPELINE_BLOCKS)

    async def hash_and_store() -> None:
        async with receive:
            async for pieces in receive:
                data = b"".join(pieces)
                # Hashing and writing one block run side by side: both release the GIL.
                async with anyio.create_task_group() as both:
                    both.start_soon(anyio.to_thread.run_sync, digest.update, data)
                    await writer.write(data)

    try:
        try:
            async with anyio.create_task_group() as pipeline:
                pipeline.start_soon(hash_and_store)
                async with send:
                    pieces: list[bytes] = []
                    gathered = 0
                    async for chunk in chunks:
                        size += len(chunk)
                        if max_bytes is not None and size > max_bytes:
                            metrics.UPLOADS.labels("too_large").inc()
                            raise PayloadTooLarge(f"Upload exceeds the limit of {max_bytes} bytes")
                        if mime is None:
                            head += chunk[: SNIFF_BYTES - len(head)]
                            if len(head) >= SNIFF_BYTES:
                                mime = _check_mime(bytes(head), allowed_mime)
                        pieces.append(chunk)
                        gathered += len(chunk)
                        if gathered >= WRITE_BLOCK:
                            await send.send(pieces)
                            pieces, gathered = [], 0
                    if pieces:
                        await send.send(pieces)
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        if mime is None:
            mime = _check_mime(bytes(head), allowed_mime)
        calculated = digest.hexdigest()
        if calculated != sha256:
            metrics.UPLOADS.labels("hash_mismatch").inc()
            raise BadRequest(f"File content SHA256 ({calculated}) does not match provided hash ({sha256})")
        await writer.commit()
    except BaseException:
        await writer.abort()
        raise
    await store.mark_stored(sha256, size, mime, storage.location(sha256), datetime.now(UTC))
    metrics.UPLOADS.labels("stored").inc()
    metrics.UPLOADED_BYTES.inc(size)
    return UploadResult(sha256, size, False, mime)


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
