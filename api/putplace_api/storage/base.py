"""The content storage interface: bytes kept once per sha256.

Backends: ``local.py`` (``{root}/{sha[:2]}/{sha}``) and ``s3.py`` (``{prefix}{sha[:2]}/{sha}``).
A write goes through a ``ContentWriter``: nothing is visible under the final name until
``commit``; ``abort`` leaves nothing behind. Callers verify the hash before committing.
One contract suite (``tests/api/test_storage_contract.py``) runs against every backend.

Upload sessions (``putplace_api.sessions``) keep a large content's chunks in storage until the
whole is there: local disk in one sparse file under ``{root}/.sessions/``, S3 in a multipart
upload of ``{prefix}.sessions/{id}``. ``assemble`` puts the chunks together and hashes them
*without* making anything visible; only ``AssembledContent.commit`` publishes the content under
its sha256, so the caller checks the hash in between, as with a ``ContentWriter``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from putplace_client.models import is_sha256

__all__ = [
    "AssembledContent",
    "ContentStorage",
    "ContentWriter",
    "SessionData",
    "StoredObject",
    "object_name",
    "sha_of_name",
    "SESSIONS_DIR",
]

SESSIONS_DIR = ".sessions"  # under the storage root or prefix: upload sessions' bytes, never content


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


@dataclass(frozen=True, slots=True)
class SessionData:
    """The bytes storage keeps for one upload session, as ``list_sessions`` finds them."""

    session_id: str
    ref: str  # the storage's handle (an S3 multipart upload id; "" on local disk)
    modified: datetime  # when it was started or last written, timezone-aware


class AssembledContent(Protocol):
    """A session's chunks put together and hashed, not yet visible under any content name."""

    sha256: str  # what the assembled bytes hash to
    size: int
    head: bytes  # the first bytes (up to what ``assemble`` was asked for), to sniff the type

    async def commit(self) -> None:
        """Make the content visible under ``sha256`` atomically; the session's bytes are gone after."""

    async def abort(self) -> None:
        """Discard the assembled bytes and the session's; safe to call more than once."""


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

    # -- upload sessions: any call naming a session whose bytes are gone raises FileNotFoundError
    async def begin_session(self, session_id: str, size: int) -> str:
        """Make room for a session's ``size`` bytes; the handle (``ref``) the other calls need."""

    async def held_chunks(self, session_id: str, ref: str) -> set[int]:
        """The numbers of the chunks written completely (0-based)."""

    async def write_chunk(
        self, session_id: str, ref: str, number: int, offset: int, body: AsyncIterator[bytes]
    ) -> None:
        """Write chunk ``number`` at ``offset``. The chunk is held only if ``body`` ends without
        raising (the caller's checks of its size and hash raise from inside it)."""

    async def assemble(self, session_id: str, ref: str, chunks: int, head_bytes: int) -> AssembledContent:
        """Put chunks 0..chunks-1 together and hash them; nothing becomes visible."""

    async def abort_session(self, session_id: str, ref: str) -> None:
        """Discard a session's bytes (idempotent: gone already is fine)."""

    def list_sessions(self) -> AsyncIterator[SessionData]:
        """The bytes of every session storage keeps (live, abandoned or half-completed)."""
