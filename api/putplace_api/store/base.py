"""The metadata store interface: file records, their history, content records, API keys
and the shared rate-limit buckets.

Two backends implement it (``sqlite.py``, ``mongo.py``) and one contract suite
(``tests/api/test_store_contract.py``) runs unchanged against both. Values crossing this
boundary are plain frozen dataclasses; routes never see a driver type.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from putplace_client import names
from putplace_client.models import FileMetadata

__all__ = [
    "StoredContent",
    "FILE_FIELDS",
    "ContentRow",
    "FileRow",
    "HistoryRow",
    "PutResult",
    "FileQuery",
    "KeyRow",
    "KeyUsage",
    "PackMove",
    "PackUsage",
    "StatsRow",
    "Visibility",
    "TokenGrant",
    "MetadataStore",
    "OBJECT_ID_PATTERN",
    "is_object_id",
    "directory",
    "PATH_END",
    "prefix_ranges",
    "DirEntry",
    "ConsoleStore",
    "list_dir",
    "glob_to_regex",
    "glob_to_sqlite",
]

# The client-owned fields of a file record, in wire order.
FILE_FIELDS: tuple[str, ...] = tuple(FileMetadata.model_fields)


@dataclass(frozen=True, slots=True)
class StoredContent:
    """One content a batch upload has just stored."""

    sha256: str
    size: int
    mime_type: str | None
    storage_path: str
    stored_by: str | None = None  # the id of the key whose upload stored it (what its quota counts)
    pack_id: str | None = None  # in a pack (putplace_api.storage.packs): which, and where in it
    pack_offset: int | None = None


@dataclass(frozen=True, slots=True)
class ContentRow:
    sha256: str
    size: int
    stored: bool
    first_seen_at: datetime
    stored_at: datetime | None = None
    mime_type: str | None = None
    storage_path: str | None = None
    stored_by: str | None = None  # the key whose upload first stored it; None: stored before quotas
    pack_id: str | None = None  # None: its own object; else bytes [pack_offset, pack_offset + size) of the pack
    pack_offset: int | None = None


@dataclass(frozen=True, slots=True)
class Visibility:
    """The records a restricted key may see and write: those on one of ``hostnames`` (exact
    names) whose path is one of ``path_prefixes`` or lies under it (whole components: ``/var/log``
    takes ``/var/log/a`` but not ``/var/logs``). None on an axis: no restriction on it.

    Prefixes are stored without a trailing slash (but ``/``), as the API's models leave them.
    """

    hostnames: tuple[str, ...] | None = None
    path_prefixes: tuple[str, ...] | None = None

    def allows(self, hostname: str, filepath: str) -> bool:
        if self.hostnames is not None and hostname not in self.hostnames:
            return False
        return self.path_prefixes is None or any(
            filepath == p or filepath.startswith(directory(p)) for p in self.path_prefixes
        )

    def reaches(self, hostname: str, folder: str) -> bool:
        """Whether the directory ``folder`` (ending with ``/``) of ``hostname`` is inside the limits
        or on the way to them (``/var/`` leads to ``/var/log``): what a browsing key may open."""
        if self.hostnames is not None and hostname not in self.hostnames:
            return False
        return self.path_prefixes is None or any(
            folder.startswith(directory(p)) or directory(p).startswith(folder) for p in self.path_prefixes
        )


def directory(prefix: str) -> str:
    """What every path under ``prefix`` starts with: the prefix and one slash."""
    return prefix if prefix.endswith("/") else prefix + "/"


# Above every character a path can hold: [directory(p), directory(p) + PATH_END) is the range
# of the paths under p, which both backends answer from their (hostname, filepath) indexes.
PATH_END = "\U0010ffff"


@dataclass(frozen=True, slots=True)
class FileRow:
    id: str
    meta: FileMetadata
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class HistoryRow:
    file: FileRow
    superseded_at: datetime
    event: str  # "replaced" | "deleted"


@dataclass(frozen=True, slots=True)
class PutResult:
    file: FileRow
    content: ContentRow


@dataclass(frozen=True, slots=True)
class FileQuery:
    hostname: str | None = None
    path_prefix: str | None = None  # canonical (names.canonical): matched as prefix_ranges says
    path_prefix_escaped: bool = False
    sha256: str | None = None
    changed_since: datetime | None = None
    after_id: str | None = None  # cursor: ids sort by creation time
    limit: int = 100
    visible: Visibility | None = None  # a restricted key's limits; None = every record


@dataclass(frozen=True, slots=True)
class KeyRow:
    id: str
    name: str
    key_hash: str
    key_prefix: str
    scopes: tuple[str, ...]
    created_at: datetime
    is_active: bool = True
    description: str | None = None
    rate_limit: float | None = None
    rate_limit_burst: int | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    # Restrictions and quotas; None (and absent from rows stored before they existed) = none.
    hostnames: tuple[str, ...] | None = None
    path_prefixes: tuple[str, ...] | None = None
    max_bytes: int | None = None
    max_files: int | None = None


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """What a key's quota counts: the contents its uploads stored first, and their bytes."""

    files: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class PackUsage:
    """What of a pack the catalogue still points at."""

    contents: int
    bytes: int


@dataclass(frozen=True, slots=True)
class PackMove:
    """A packed content copied to another pack by gc: where it was, where it is now."""

    sha256: str
    from_pack: str
    from_offset: int
    to_pack: str
    to_offset: int
    storage_path: str  # the new one


@dataclass(frozen=True, slots=True)
class StatsRow:
    files: int
    hosts: int
    contents_stored: int
    stored_bytes: int
    logical_bytes: int


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """Tokens taken from a shared bucket; when none, how long until one is free."""

    granted: int
    retry_after: float = 0.0
    extra: Mapping[str, float] = field(default_factory=dict)


class MetadataStore(Protocol):
    kind: str  # "sqlite" | "mongodb", as /health reports it

    async def open(self) -> None:
        """Connect and create tables or indexes (idempotent)."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise BackendUnavailable unless the database answers."""

    # -- files ---------------------------------------------------------------------------
    async def put_files(self, files: Sequence[FileMetadata], now: datetime) -> list[PutResult]:
        """Upsert the current record of each (hostname, filepath, filepath_escaped), keeping a changed
        record's previous version as history, and make sure a content record exists for
        each sha256. Results are in input order. Content records are read only once the
        file records naming them are written (or in the same transaction): garbage
        collection relies on it (``putplace_api.maintenance.gc``)."""

    async def delete_file(self, hostname: str, filepath: str, now: datetime, *, escaped: bool = False) -> bool:
        """Move the current record of a name to history as deleted; False if there was none."""

    async def file_by_sha(self, sha256: str) -> FileRow | None: ...

    async def list_files(self, query: FileQuery) -> list[FileRow]: ...

    async def visible_shas(self, shas: Collection[str], visible: Visibility) -> set[str]:
        """Those of ``shas`` that a current record inside ``visible`` names."""

    async def history(
        self, hostname: str, filepath: str, limit: int, before: datetime | None, *, escaped: bool = False
    ) -> list[HistoryRow]:
        """Earlier versions of one name, newest first."""

    # -- content -------------------------------------------------------------------------
    async def get_content(self, sha256: str) -> ContentRow | None: ...

    async def contents(self, shas: Collection[str]) -> dict[str, ContentRow]:
        """The content records that exist among ``shas``, in one round trip per chunk."""

    async def mark_stored(
        self,
        sha256: str,
        size: int,
        mime_type: str | None,
        storage_path: str,
        now: datetime,
        stored_by: str | None = None,
    ) -> ContentRow:
        """Record a content as stored; ``stored_by`` is kept only by the upload that stores it first."""

    async def mark_stored_many(self, items: Sequence[StoredContent], now: datetime) -> None:
        """``mark_stored`` for a batch of contents, in as few round trips as the backend allows."""

    async def stats(self, visible: Visibility | None = None) -> StatsRow:
        """Catalogue totals, over the records inside ``visible`` only when given."""

    async def key_usage(self, key_ids: Collection[str]) -> dict[str, KeyUsage]:
        """What each of ``key_ids`` has stored (``ContentRow.stored_by``); keys that stored nothing are left out."""

    # -- integrity: verify and garbage collection (putplace_api.maintenance) --------------
    def iter_contents(self, batch: int = 1000) -> AsyncIterator[list[ContentRow]]:
        """Every content record in sha256 order, ``batch`` per round trip (a cursor on sha256)."""

    def iter_referenced(self, batch: int = 1000) -> AsyncIterator[list[str]]:
        """Every distinct sha256 named by a current or historical file record, in order, in batches."""

    async def referenced(self, shas: Collection[str]) -> set[str]:
        """Those of ``shas`` that a current or historical file record names (one round trip per chunk)."""

    async def delete_contents_if_unchanged(self, rows: Sequence[ContentRow]) -> set[str]:
        """Delete each content record only while it is still as ``rows`` shows it (same stored
        flag, stored_at and size); return the sha256s no longer recorded afterwards."""

    async def restore_contents(self, rows: Sequence[ContentRow]) -> None:
        """Put back content records deleted by ``delete_contents_if_unchanged``, where none
        exists now (a record created meanwhile is kept as it is)."""

    # -- packs (putplace_api.storage.packs; gc reclaims and repacks them) ------------------
    async def pack_usage(self, pack_ids: Collection[str]) -> dict[str, PackUsage]:
        """The stored contents each pack holds for the catalogue; packs nothing points into are left out."""

    async def packed_contents(self, pack_id: str) -> list[ContentRow]:
        """The stored content records pointing into one pack, by offset."""

    async def move_packed(self, moves: Sequence[PackMove]) -> set[str]:
        """Point each content at its new place, only while it still points where the move
        says it was; return the sha256s moved. Each record switches atomically."""

    # -- keys ----------------------------------------------------------------------------
    async def insert_key(self, key: KeyRow) -> None: ...

    async def key_by_hash(self, key_hash: str) -> KeyRow | None: ...

    async def get_key(self, key_id: str) -> KeyRow | None: ...

    async def list_keys(self) -> list[KeyRow]: ...

    async def revoke_key(self, key_id: str, now: datetime) -> bool: ...

    async def delete_key(self, key_id: str) -> bool: ...

    async def touch_keys(self, last_used: Mapping[str, datetime]) -> None:
        """Record when keys were last used (batched: not one write per request)."""

    async def claim(self, marker: str, now: datetime) -> bool:
        """Insert a one-time marker; True only for the first caller across all replicas."""

    # -- rate limits ---------------------------------------------------------------------
    async def take_tokens(self, bucket: str, rate: float, burst: int, want: int, now: float) -> TokenGrant:
        """Atomically take up to ``want`` tokens from a GCRA bucket shared by all replicas."""


# -- helpers shared by the backends ------------------------------------------------------


def new_id() -> str:
    """A 24-hex-digit ObjectId string: the id shape existing PutPlace clients expect,
    sortable by creation time, the same on both backends."""
    from bson import ObjectId

    return str(ObjectId())


OBJECT_ID_PATTERN = r"^[0-9a-fA-F]{24}$"  # what is_object_id accepts of a string


def is_object_id(value: str) -> bool:
    from bson import ObjectId

    return ObjectId.is_valid(value)


def gcra(tat: float, now: float, rate: float, burst: int, want: int) -> tuple[int, float, float]:
    """Generic cell rate algorithm on one number, the theoretical arrival time (tat).

    Returns (granted, new_tat, retry_after). A bucket of ``burst`` tokens refills at
    ``rate`` per second; taking n tokens pushes tat forward by n/rate, and is allowed while
    tat stays within burst/rate of now. One number means a compare-and-set is enough to
    share a bucket between replicas: no transaction needed (MongoDB, FerretDB).
    """
    interval = 1.0 / rate
    tolerance = burst * interval
    start = max(tat, now)
    available = int((now + tolerance - start) / interval + 1e-9)
    granted = max(0, min(want, available))
    if granted:
        return granted, start + granted * interval, 0.0
    return 0, tat, max(0.0, start + interval - tolerance - now)


def prefix_ranges(prefix: str, escaped: bool) -> list[tuple[str, bool | None]]:
    """The text ranges a path prefix selects: (the text stored names start with, the flag they
    have -- None: either). A plain prefix selects plain names under it and escaped names
    under it (there its backslashes are doubled); an escaped one, escaped names only."""
    if escaped:
        return [(prefix, True)]
    if "\\" not in prefix:
        return [(prefix, None)]  # the same text on both sides
    return [(prefix, False), (names.escaped_prefix(prefix), True)]


def record_changed(old: FileMetadata, new: FileMetadata) -> bool:
    return any(getattr(old, f) != getattr(new, f) for f in FILE_FIELDS)


class LeaseStore(Protocol):
    """Named leases, a part of ``MetadataStore`` (both backends implement it)."""

    async def take_lease(self, name: str, holder: str, now: datetime, until: datetime) -> bool:
        """Hold ``name`` until ``until``: True for one holder at a time across all processes and
        replicas (an expired lease may be taken over; its holder may renew it). A webhook
        subscription's queue (``delivery_lease``) and ``gc --delete`` (``maintenance.lease``)."""

    async def release_lease(self, name: str, holder: str) -> None:
        """Free ``name`` at once, if ``holder`` still holds it."""


# -- webhooks: subscriptions and their delivery queue (putplace_api.webhooks) -------------
# Kept apart from the rest of the store so that the section can be read (and merged) alone.

DELIVERY_PENDING = "pending"
DELIVERY_DEAD = "dead"


@dataclass(frozen=True, slots=True)
class SubscriptionRow:
    """A webhook subscription. ``secret`` signs every delivery, so it is stored as it is (a hash
    could not sign); it is shown once, at creation, and never logged."""

    id: str
    url: str
    events: tuple[str, ...]
    secret: str
    created_at: datetime
    description: str | None = None
    active: bool = True


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """One event for one subscription; ``id`` sorts by creation, which is the delivery order."""

    id: str
    subscription_id: str
    event: str
    body: str  # the JSON sent, byte for byte what is signed
    created_at: datetime
    next_attempt_at: datetime
    attempts: int = 0
    status: str = DELIVERY_PENDING
    last_error: str | None = None


def delivery_lease(subscription_id: str) -> str:
    """The lease (``LeaseStore.take_lease``) whose holder serves the subscription's queue."""
    return f"webhook:{subscription_id}"


class WebhookStore(LeaseStore, Protocol):
    """The webhook part of ``MetadataStore`` (both backends implement both)."""

    async def insert_subscription(self, row: SubscriptionRow) -> None: ...

    async def list_subscriptions(self) -> list[SubscriptionRow]: ...

    async def delete_subscription(self, subscription_id: str) -> bool:
        """Delete it and every delivery still queued for it; False if there was none."""

    async def enqueue_deliveries(self, rows: Sequence[DeliveryRow]) -> None:
        """Queue deliveries, in as few round trips as the backend allows."""

    async def delivery_head(self, subscription_id: str) -> DeliveryRow | None:
        """The oldest pending delivery of a subscription: the only one that may be sent."""

    async def delivery_done(self, delivery_id: str) -> None:
        """Delivered: forget it."""

    async def delivery_failed(
        self, delivery_id: str, attempts: int, next_attempt_at: datetime, error: str, dead: bool
    ) -> None: ...

    async def dead_deliveries(self, after_id: str | None, limit: int) -> list[DeliveryRow]:
        """Dead letters, oldest first."""

    async def replay_deliveries(self, delivery_ids: Collection[str] | None, now: datetime) -> int:
        """Dead letters (these, or all when None) back to pending with fresh attempts; how many."""

    async def delivery_counts(self) -> dict[str, int]:
        """Queued deliveries by status (pending, dead)."""

    async def purge_deliveries(self, keep: Collection[str], before: datetime) -> int:
        """Delete deliveries queued before ``before`` for a subscription not in ``keep`` (one deleted
        while another replica still had it cached); how many."""


__all__ += ["DELIVERY_PENDING", "DELIVERY_DEAD", "SubscriptionRow", "DeliveryRow", "WebhookStore"]
# -- console queries (putplace_api.routes.browse) ------------------------------------------
# Kept apart from the protocol above: what the web console needs to browse a large catalogue
# a page at a time. Each is an index seek or a bounded walk, never a scan of the catalogue
# (search by glob is the exception: it filters in id order, documented in docs/console.md).


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One child of a directory: a subdirectory (``file`` None) or a file's current record."""

    name: str
    path: str  # a subdirectory's path ends with "/"
    file: FileRow | None = None


class ConsoleStore(Protocol):
    async def list_nodes(self, after: str | None, limit: int) -> list[str]:
        """Hostnames with current records, in order, after ``after`` (one index seek each)."""

    async def paths_after(self, hostname: str, lower: str, upper: str, limit: int) -> list[FileRow]:
        """Current records of one host with ``lower < filepath < upper``, in path order."""

    async def current_file(self, hostname: str, filepath: str, escaped: bool = False) -> FileRow | None: ...

    async def search_files(self, pattern: str, hostname: str | None, after_id: str | None, limit: int) -> list[FileRow]:
        """Current records whose path matches the glob ``pattern`` (``*``, ``?``, ``[...]``), in id order."""

    async def recent_files(self, before: tuple[datetime, str] | None, limit: int) -> list[FileRow]:
        """Current records, most recently changed first; ``before`` = (updated_at, id) of the previous page's last."""


PATH_END = "\U0010ffff"  # sorts after every character a path may hold


async def list_dir(store: ConsoleStore, hostname: str, directory: str, after: str | None, limit: int) -> list[DirEntry]:
    """The children of ``directory`` on ``hostname`` in path order, after the entry ``after``.

    A skip scan over the (hostname, filepath) index: files of the directory are read in
    batches, and a subdirectory costs one entry and one seek past all it holds -- so a page
    costs O(limit) index reads however many files lie below.
    """
    prefix = directory if directory.endswith("/") else directory + "/"
    lower = prefix
    if after is not None and after.startswith(prefix) and after > prefix:
        lower = after + PATH_END if after.endswith("/") else after
    upper = prefix + PATH_END
    entries: list[DirEntry] = []
    while len(entries) < limit:
        rows = await store.paths_after(hostname, lower, upper, limit - len(entries))
        if not rows:
            break
        for row in rows:
            name, slash, _ = row.meta.filepath[len(prefix) :].partition("/")
            if slash:
                sub = prefix + name + "/"
                entries.append(DirEntry(name, sub))
                lower = sub + PATH_END  # everything below it is one entry
                break
            entries.append(DirEntry(name, row.meta.filepath, row))
            lower = row.meta.filepath
    return entries[:limit]


def glob_to_regex(pattern: str) -> str:
    """A glob (``*`` any run of characters, ``?`` one, ``[...]``/``[!...]`` a class) as an
    anchored regular expression that MongoDB and Python read alike."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            end = pattern.find("]", i + 1 if pattern[i : i + 1] in ("!", "]") else i)
            if end < 0:
                out.append(re.escape(ch))
                continue
            body = pattern[i:end]
            i = end + 1
            negate = body.startswith("!")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\").replace("^", "\\^") + "]")
        else:
            out.append(re.escape(ch))
    return "^" + "".join(out) + "$"


def glob_to_sqlite(pattern: str) -> str:
    """A glob as SQLite's GLOB operator reads it: the same, but ``[^...]`` negates, not ``[!...]``."""
    return re.sub(r"\[!", "[^", pattern)


# -- upload sessions (putplace_api.sessions) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionRow:
    """An upload session: its content (sha256, size), how it is cut, whose it is, and the
    storage's handle on its bytes (an S3 multipart upload id; empty for local disk)."""

    id: str
    sha256: str
    size: int
    chunk_size: int
    key_id: str
    storage_ref: str
    created_at: datetime
    expires_at: datetime


class SessionStore(Protocol):
    async def insert_session(self, row: SessionRow) -> None: ...

    async def get_session(self, session_id: str) -> SessionRow | None: ...

    async def touch_session(self, session_id: str, expires_at: datetime) -> None:
        """Push a session's expiry later (it was used)."""

    async def delete_session(self, session_id: str) -> bool:
        """Forget a session; False when it was gone already (another request completed, aborted
        or expired it)."""

    async def expired_sessions(self, now: datetime, limit: int) -> list[SessionRow]:
        """Sessions whose expiry is before ``now``, oldest expiry first."""


__all__ += ["SessionRow", "SessionStore"]
