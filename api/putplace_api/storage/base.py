"""The content storage interface: bytes kept once per sha256.

Backends: ``local.py`` (``{root}/{sha[:2]}/{sha}``) and ``s3.py`` (``{prefix}{sha[:2]}/{sha}``).
A write goes through a ``ContentWriter``: nothing is visible under the final name until
``commit``; ``abort`` leaves nothing behind. Callers verify the hash before committing.
One contract suite (``tests/api/test_storage_contract.py``) runs against every backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from putplace_client.models import is_sha256

__all__ = ["ContentStorage", "ContentWriter", "StoredObject", "object_name", "sha_of_name"]


def object_name(sha256: str) -> str:
    return f"{sha256[:2]}/{sha256}"


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
    sha256: str | None  # None: a foreign name, not content this service wrote


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

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Store small contents, already verified, all at once: each becomes visible under its
        sha256 atomically (never partial), and all are durable when this returns."""

    def read(self, sha256: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes [start, end) of the content (end None = to the end)."""

    async def delete(self, sha256: str) -> bool: ...

    def list_objects(self) -> AsyncIterator[StoredObject]:
        """Every committed object (never one being written), in no particular order."""

    async def stat(self, sha256: str) -> StoredObject | None:
        """The object of sha256 as listing shows it; None when there is none."""
