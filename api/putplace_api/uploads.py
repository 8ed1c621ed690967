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

import anyio.to_thread

from putplace_api import metrics
from putplace_api.errors import BadRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
from putplace_api.mime import SNIFF_BYTES, detect_mime, mime_allowed
from putplace_api.storage.base import ContentStorage
from putplace_api.store.base import MetadataStore

__all__ = ["UploadResult", "receive_content", "WRITE_BLOCK"]

# Bytes are gathered into blocks this large before one thread hop hashes them (hashlib
# releases the GIL) and one hands them to storage: few hops, bounded memory per upload.
WRITE_BLOCK = 1024 * 1024


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
    block = bytearray()

    async def flush() -> None:
        data = bytes(block)
        block.clear()
        await anyio.to_thread.run_sync(digest.update, data)
        await writer.write(data)

    try:
        async for chunk in chunks:
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                metrics.UPLOADS.labels("too_large").inc()
                raise PayloadTooLarge(f"Upload exceeds the limit of {max_bytes} bytes")
            if mime is None:
                head += chunk[: SNIFF_BYTES - len(head)]
                if len(head) >= SNIFF_BYTES:
                    mime = _check_mime(bytes(head), allowed_mime)
            block += chunk
            if len(block) >= WRITE_BLOCK:
                await flush()
        if mime is None:
            mime = _check_mime(bytes(head), allowed_mime)
        if block:
            await flush()
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


def _check_mime(head: bytes, allowed: list[str]) -> str:
    mime = detect_mime(head)
    if not mime_allowed(mime, allowed):
        metrics.UPLOADS.labels("unsupported_type").inc()
        raise UnsupportedMediaType(f"Content type {mime} is not allowed on this server")
    return mime
