"""Reading a stored content wherever it lies: its own object, or a byte range of a pack.

Used by ``GET /content`` and by ``verify``. A pack may be repacked by ``gc`` between reading a
content record and reading the bytes (the record is switched to the new pack, then the old one
is deleted): a read that finds its pack gone reads the record again and follows it, once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from putplace_api.storage.base import ContentStorage
from putplace_api.store.base import ContentRow, MetadataStore

__all__ = ["read_content", "first_bytes"]


def read_content(
    storage: ContentStorage, row: ContentRow, start: int = 0, end: int | None = None
) -> AsyncIterator[bytes]:
    """Bytes [start, end) of a stored content (end None: to its end); FileNotFoundError when
    its object or pack is gone."""
    if row.pack_id is None:
        return storage.read(row.sha256, start, end)
    end = row.size if end is None else min(end, row.size)
    base = row.pack_offset or 0
    if end <= start:
        return _nothing_from(storage, row.pack_id)
    return storage.read_pack(row.pack_id, base + start, base + end)


async def _nothing_from(storage: ContentStorage, pack_id: str) -> AsyncIterator[bytes]:
    """No bytes of a pack, once it is known to exist (an empty range is no request to S3)."""
    if await storage.stat_pack(pack_id) is None:
        raise FileNotFoundError(pack_id)
    return
    yield


async def first_bytes(
    store: MetadataStore, storage: ContentStorage, row: ContentRow, start: int, end: int | None, want: int
) -> tuple[list[bytes], AsyncIterator[bytes]]:
    """Read at least ``want`` bytes of [start, end) (fewer only at its end); the chunks read, and
    the iterator that goes on from there. A pack gone meanwhile is followed to where the record
    points now; FileNotFoundError when the bytes are gone for good."""
    for attempt in range(2):
        chunks = read_content(storage, row, start, end)
        first: list[bytes] = []
        held = 0
        try:
            async for chunk in chunks:
                first.append(chunk)
                held += len(chunk)
                if held >= want:
                    break
            return first, chunks
        except FileNotFoundError:
            now = await store.get_content(row.sha256) if row.pack_id is not None and not attempt else None
            if now is None or not now.stored or (now.pack_id, now.pack_offset) == (row.pack_id, row.pack_offset):
                raise
            row = now
    raise AssertionError("unreachable: the second attempt returns or raises")
