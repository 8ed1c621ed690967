"""The content storage interface: bytes kept once per sha256.

Backends: ``local.py`` (``{root}/{sha[:2]}/{sha}``) and ``s3.py`` (``{prefix}{sha[:2]}/{sha}``).
A write goes through a ``ContentWriter``: nothing is visible under the final name until
``commit``; ``abort`` leaves nothing behind. Callers verify the hash before committing.

Small contents are kept in *packs* instead (``packs/{pack_id}``, see ``packs.py``): many
contents concatenated in one object, written whole and durably before any record points into
it; the catalogue holds each content's pack and offset. A pack is never changed once written.
One contract suite (``tests/api/test_storage_contract.py``) runs against every backend.

Upload sessions (``putplace_api.sessions``) keep a large content's chunks in storage until the
whole is there: local disk in one sparse file under ``{root}/.sessions/``, S3 in a multipart
upload of ``{prefix}.sessions/{id}``. ``assemble`` puts the chunks together and hashes them
*without* making anything visible; only ``AssembledContent.commit`` publishes the content under
its sha256, so the caller checks the hash in between, as with a ``ContentWriter``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
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
    "PACKS_DIR",
    "SESSIONS_DIR",
    "pack_name",
    "pack_of_name",
]

PACKS_DIR = "packs"
_PACK_ID = re.compile(r"^[0-9a-f]{32}$")
SESSIONS_DIR = ".sessions"  # under the storage root or prefix: upload sessions' bytes, never content


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
