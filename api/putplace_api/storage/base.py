"""The content storage interface: bytes kept once per sha256.

Backends: ``local.py`` (``{root}/{sha[:2]}/{sha}``) and ``s3.py`` (``{prefix}{sha[:2]}/{sha}``).
A write goes through a ``ContentWriter``: nothing is visible under the final name until
``commit``; ``abort`` leaves nothing behind. Callers verify the hash before committing.

Small contents are kept in *packs* instead (``packs/{pack_id}``, see ``packs.py``): many
contents concatenated in one object, written whole and durably before any record points into
it; the catalogue holds each content's pack and offset. A pack is never changed once written.
One contract suite (``tests/api/test_storage_contract.py``) runs against every backend.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from putplace_client.models import is_sha256

__all__ = [
    "ContentStorage",
    "ContentWriter",
    "StoredObject",
    "object_name",
    "sha_of_name",
    "PACKS_DIR",
    "pack_name",
    "pack_of_name",
]

PACKS_DIR = "packs"
_PACK_ID = re.compile(r"^[0-9a-f]{32}$")


def object_name(sha256: str) -> str:
    return f"{sha256[:2]}/{sha256}"


def pack_name(pack_id: str) -> str:
    return f"{PACKS_DIR}/{pack_id}"


def pack_of_name(name: str) -> str | None:
    """The pack id an object name (``packs/<32 hex digits>``) holds; None for any other name."""
    prefix, _, pack_id = name.partition("/")
    return pack_id if prefix == PACKS_DIR and _PACK_ID.match(pack_id) else None


def sha_of_name(name: str) -> str | None:
    """The sha256 an object name (``xx/sha256``) holds; None for any other name."""
    prefix, _, sha = name.partition("/")
    return sha if is_sha256(sha) and prefix == sha[:2] else None


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object as storage lists it."""

    name: str  # under the storage root or prefix, e.g. "ab/ab12..."
    size: int
    modified: datetime  # timezone-aware; when the object was last written (committed)
    sha256: str | None  # None: a pack or a foreign name, not one content this service wrote
    pack_id: str | None = None  # set for a pack (``packs/<id>``)


class ContentWriter(Protocol):
    async def write(self, chunk: bytes) -> None: ...

    async def commit(self) -> None:
        """Make the content visible under its sha256, atomically."""

    async def abort(self) -> None:
        """Discard everything written; safe to call more than once or after commit."""


class ContentStorage(Protocol):
    kind: str  # "local" | "s3"

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise BackendUnavailable unless the storage answers."""

    def location(self, sha256: str) -> str:
        """Where the content of sha256 lives, as a URL (reported as storage_path)."""

    async def exists(self, sha256: str) -> bool: ...

    async def size(self, sha256: str) -> int | None: ...

    async def writer(self, sha256: str) -> ContentWriter: ...

    def read(self, sha256: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes [start, end) of the content (end None = to the end)."""

    async def delete(self, sha256: str) -> bool: ...

    def list_objects(self) -> AsyncIterator[StoredObject]:
        """Every committed object (never one being written), in no particular order."""

    async def stat(self, sha256: str) -> StoredObject | None:
        """The object of sha256 as listing shows it; None when there is none."""

    # -- packs: many small contents in one object (putplace_api.storage.packs) -------------
    def pack_location(self, pack_id: str) -> str:
        """Where a pack lives, as a URL."""

    async def write_pack(self, pack_id: str, data: bytes) -> None:
        """Write a whole pack under ``packs/{pack_id}``: visible only complete, durable on return."""

    def read_pack(self, pack_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Stream bytes [start, end) of a pack (FileNotFoundError when there is no such pack;
        fewer bytes when the pack is shorter; an empty range reads and checks nothing)."""

    async def stat_pack(self, pack_id: str) -> StoredObject | None: ...

    async def delete_pack(self, pack_id: str) -> bool: ...
