"""Packs: the small contents of one batch upload, concatenated into one storage object.

Storing each small content as its own object costs a file and a rename (or an S3 PUT) per
content, which dominated the API's CPU on many small files. A batch (``POST /upload_files``)
is written instead as one pack, ``packs/{pack_id}``: the contents one after another, no
header; where each one starts is kept in its content record (pack id, offset; its length is
the content's size). The order is the single upload's: the pack is written whole and durable
(fsync and rename, or one PutObject) before any record points into it, so a crash leaves at
worst a pack that nothing names, which ``gc`` reclaims. A pack never changes once written:
``gc`` copies the live contents of a mostly dead pack into a new one and switches the records
before deleting the old pack (``putplace_api.maintenance.gc``).

Large contents keep one object each (``ContentStorage.writer``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from putplace_api.storage.base import ContentStorage

__all__ = ["Packed", "new_pack_id", "put_pack"]


@dataclass(frozen=True, slots=True)
class Packed:
    """Where one content of a pack lies."""

    sha256: str
    pack_id: str
    offset: int
    size: int
    storage_path: str  # its record's: the pack's URL and the byte range in it


def new_pack_id() -> str:
    return uuid.uuid4().hex


async def put_pack(storage: ContentStorage, items: Sequence[tuple[str, bytes]]) -> list[Packed]:
    """Write verified contents as one new pack, durable on return; where each lies, in order."""
    pack_id = new_pack_id()
    where = storage.pack_location(pack_id)  # once per pack, not per content (a Path made a URI, on disk)
    placed: list[Packed] = []
    offset = 0
    for sha256, data in items:
        end = offset + len(data)
        placed.append(Packed(sha256, pack_id, offset, len(data), f"{where}#bytes={offset}-{end}"))
        offset = end
    await storage.write_pack(pack_id, b"".join(data for _, data in items))
    return placed
