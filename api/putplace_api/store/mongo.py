"""MongoDB metadata store: the backend for several API replicas sharing one database.

It implements the ``MetadataStore`` protocol with pymongo's native async client and behaves
like the SQLite reference backend (``sqlite.py``); the contract suite
(``tests/api/test_store_contract.py``) runs unchanged against both.

Collections (ids are strings, so ordering and cursors are those of the SQLite backend):

- ``files``: the current record of each (hostname, filepath, filepath_escaped): the flag is on
  every record (a document without it has the old shape: ``migrations/mongo.py``); ``_id`` is
  ``new_id()`` (a 24-hex ObjectId *string*, sortable by creation time); ``rev``, a fresh token
  on every write.
- ``file_history``: earlier versions (``id`` = the file's id, ``superseded_at``, ``event``,
  ``order`` to sort versions of one instant). The entry archiving stored version ``rev`` of
  file ``id`` has ``_id = "<id>@<rev>"`` and the state that replaced it (``next``).
- ``contents``: ``_id`` = sha256. ``api_keys``: ``_id`` = key id. ``markers``: ``_id`` = name.
- ``rate_buckets``: one document per state of a bucket: ``b`` (the bucket), ``seq``, ``tat``.
- ``leases``: one document per state of a named lease: ``s`` (the name), ``k``, ``holder``,
  ``until`` (``webhook_leases``, from before, is left unread).

Datetimes are stored as BSON dates, which hold milliseconds: times passed in are truncated to
the millisecond, so what a call returns equals what a later read returns. They come back as
timezone-aware UTC.

It must also run on FerretDB v1 (the test server), so it keeps to what FerretDB v1 supports:

- no multi-document transactions, no pipeline-style updates, no ``arrayFilters``: only
  ``$set``, ``$unset``, ``$setOnInsert``, ``$max`` updates.
- FerretDB v1 runs an update (and findAndModify) as "query, then write by ``_id``": a filter
  such as ``{_id, rev: old}`` is *not* a compare-and-set there. The only atomic conditional
  writes are inserts into a unique index (and deletes). So every compare-and-set here is an
  insert:

  - replacing or deleting file version ``rev`` first inserts its history entry
    ``"<id>@<rev>"``: one writer wins each version, and winning commits the change. The winner
    then writes the current record (conditionally on ``rev``, which real MongoDB honours). The
    entry keeps the new state (``next``): a writer that finds a version claimed but still
    current rolls it forward -- after a crash between the two writes, or after FerretDB's
    non-atomic update let a stale write put an older state back.
  - a rate bucket is a chain of states, unique on (bucket, seq): taking tokens inserts the
    state ``seq + 1`` computed from state ``seq``. States are pruned once a minute old.

  The remaining FerretDB-only races are narrow and harmless in practice (besides the
  self-healing one above): two concurrent first
  uploads of one content may both set ``stored_at``; concurrent ``touch_keys`` may not keep
  the latest time; revoking a key twice at once may keep either time.
- aggregation limited to ``$match`` and ``$group`` with ``$sum``, and *one* accumulator per
  ``$group``: FerretDB v1.24 answers 0 for every ``$sum`` after the first in the same stage.
- ``$in`` and ``$or`` read the whole collection on FerretDB (only equalities run in its
  database): there, lookups by key are equalities, a few at a time (``_lookups``; FerretDB is
  recognised at ``open`` by the ``ferretdbFeatures`` of its ``buildInfo``). Even an equality is
  a scan of the table on FerretDB v1.24 + PostgreSQL: it becomes ``_jsonb->'f' @> value``,
  which the btree index on ``(_jsonb->'f')`` cannot answer (``EXPLAIN``: Seq Scan), so every
  read costs the collection's size; only inserts meet an index (the unique ones). Writes
  therefore insert first where a duplicate-key error says what a read would
  (``_ensure_contents``); ``bench/ferretdb_growth.py`` measures the rest.
- one index per ``createIndexes`` command: FerretDB v1 panics when two it names exist already.
- at most 50 statements per ``update`` command: FerretDB v1 keeps every statement's query open
  until the command ends and hangs forever once that reaches its 100 SQLite connections.

Connection problems, and server answers that mean "not now" (shutting down, an internal error),
become ``BackendUnavailable("database", ...)`` in one place (``_translate_errors``); every other
error (a duplicate key id, a bad argument) propagates unchanged, since it is the caller's bug.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, DeleteOne, InsertOne, ReturnDocument, UpdateOne
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    WTimeoutError,
)

from putplace_api.errors import BackendUnavailable
from putplace_api.store.base import (
    DELIVERY_DEAD,
    DELIVERY_PENDING,
    FILE_FIELDS,
    PATH_END,
    ConsoleStore,
    ContentRow,
    DeliveryRow,
    FileQuery,
    FileRow,
    HistoryRow,
    KeyRow,
    KeyUsage,
    PackMove,
    PackUsage,
    PutResult,
    SessionRow,
    StatsRow,
    StoredContent,
    SubscriptionRow,
    TokenGrant,
    Visibility,
    delivery_lease,
    directory,
    gcra,
    glob_to_regex,
    new_id,
    prefix_ranges,
    record_changed,
)
from putplace_api.store.migrations import mongo as migrations
from putplace_client.models import FileMetadata

__all__ = ["MongoStore"]

T = TypeVar("T")

DEFAULT_DATABASE = "putplace"
DUPLICATE_KEY = 11000
_LOOKUPS_AT_ONCE = 16  # equality lookups in flight at once (see MongoStore._lookups)
_QUERY_CHUNK = 500  # keys per find: stays far below the 16 MB command limit with long paths
_UPDATE_CHUNK = 50  # statements per update command: FerretDB v1 deadlocks at 100 (see _bulk)
_INSERT_CHUNK = 1000
_PUT_ROUNDS = 100  # re-plans of the records of a batch that concurrent writers changed first
_CAS_ATTEMPTS = 100  # compare-and-set attempts on one rate bucket
_PRUNE_EVERY = 32  # rate bucket states: prune old ones at every 32nd state...
_PRUNE_AGE = 60.0  # ...those older than this (seconds) and not among the two newest
_UNAVAILABLE = (ConnectionFailure, ExecutionTimeout, WTimeoutError)  # ConnectionFailure covers
# ServerSelectionTimeoutError, AutoReconnect, NetworkTimeout and WaitQueueTimeoutError.


# -- the error boundary ------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    text = str(exc).split(", Timeout:")[0]  # server selection errors append the topology
    return text if len(text) <= 300 else text[:297] + "..."


# Server answers that mean "not now" rather than "wrong request": the codes MongoDB gives for
# shutting down, stepping down or an unreachable peer (pymongo's retryable codes), and
# InternalError, which FerretDB answers for a command cut short by its own shutdown ("context
# canceled"). A retry after the outage can succeed, so they are 503s, not 500s.
_INTERNAL_ERROR = 1
_TRANSIENT_CODES = frozenset(
    {_INTERNAL_ERROR, 6, 7, 89, 91, 134, 189, 262, 9001, 10058, 10107, 11600, 11602, 13435, 13436}
)


def _transient(code: object) -> bool:
    return code in _TRANSIENT_CODES


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    if isinstance(exc, BulkWriteError):
        # Its write concern timed out, or a write failed for a transient reason: every write of
        # the store is safe to retry, so the caller may send the whole batch again.
        write_errors = exc.details.get("writeErrors") or []
        return any(_transient(e.get("code")) for e in write_errors) or (
            not write_errors and bool(exc.details.get("writeConcernErrors"))
        )
    if isinstance(exc, OperationFailure):
        return _transient(exc.code) or exc.has_error_label("RetryableWriteError")
    return False


def _translating(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            if _unavailable(exc):
                raise BackendUnavailable("database", _reason(exc)) from exc
            raise

    return wrapper


def _translating_iterator(fn: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[T]:
        try:
            async for item in fn(*args, **kwargs):
                yield item
        except Exception as exc:
            if _unavailable(exc):
                raise BackendUnavailable("database", _reason(exc)) from exc
            raise

    return wrapper


def _translate_errors(cls: type[T]) -> type[T]:
    """The one boundary: wrap every public coroutine method (and async iterator) of the class."""
    for name, member in list(vars(cls).items()):
        if name.startswith("_"):
            continue
        if inspect.iscoroutinefunction(member):
            setattr(cls, name, _translating(member))
        elif inspect.isasyncgenfunction(member):
            setattr(cls, name, _translating_iterator(member))
    return cls


# -- documents <-> rows ------------------------------------------------------------------


def _ms(value: datetime) -> datetime:
    """Truncate to what a BSON date keeps (milliseconds)."""
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _ms_opt(value: datetime | None) -> datetime | None:
    return None if value is None else _ms(value)


def _meta(doc: Mapping[str, Any]) -> FileMetadata:
    return FileMetadata.model_validate({f: doc[f] for f in FILE_FIELDS if f in doc})


def _file_row(doc: Mapping[str, Any], id_field: str = "_id") -> FileRow:
    return FileRow(id=doc[id_field], meta=_meta(doc), created_at=doc["created_at"], updated_at=doc["updated_at"])


def _file_fields(row: FileRow) -> dict[str, Any]:
    return {**row.meta.model_dump(), "created_at": row.created_at, "updated_at": row.updated_at}


def _version_id(file_id: str, rev: str | None) -> str:
    """History _id of stored version ``rev``: inserting it is the claim to supersede it."""
    return f"{file_id}@{rev or '-'}"


def _history_doc(old: FileRow, now: datetime, event: str, history_id: str) -> dict[str, Any]:
    # order: new_id() strings increase within a process, ordering versions of one instant.
    return {
        "_id": history_id,
        "id": old.id,
        **_file_fields(old),
        "superseded_at": now,
        "event": event,
        "order": new_id(),
    }


def _content_row(doc: Mapping[str, Any]) -> ContentRow:
    return ContentRow(
        sha256=doc["_id"],
        size=doc["size"],
        stored=bool(doc.get("stored", False)),
        first_seen_at=doc["first_seen_at"],
        stored_at=doc.get("stored_at"),
        mime_type=doc.get("mime_type"),
        storage_path=doc.get("storage_path"),
        stored_by=doc.get("stored_by"),
        pack_id=doc.get("pack_id"),
        pack_offset=doc.get("pack_offset"),
    )


def _visible_filter(v: Visibility | None) -> list[dict[str, Any]]:
    """Query clauses (to combine with ``$and``) for the records inside ``v``."""
    if v is None:
        return []
    clauses: list[dict[str, Any]] = []
    if v.hostnames is not None:  # one host (a node's key) as an equality: FerretDB runs that in its database
        clauses.append({"hostname": v.hostnames[0] if len(v.hostnames) == 1 else {"$in": list(v.hostnames)}})
    if v.path_prefixes is not None:
        ranges: list[dict[str, Any]] = []
        for p in v.path_prefixes:
            ranges += [{"filepath": p}, {"filepath": {"$gte": directory(p), "$lt": directory(p) + PATH_END}}]
        clauses.append({"$or": ranges})
    return clauses


def _all_of(clauses: list[dict[str, Any]]) -> dict[str, Any]:
    return {} if not clauses else clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _key_doc(key: KeyRow) -> dict[str, Any]:
    return {
        "_id": key.id,
        "name": key.name,
        "description": key.description,
        "key_hash": key.key_hash,
        "key_prefix": key.key_prefix,
        "scopes": list(key.scopes),
        "rate_limit": key.rate_limit,
        "rate_limit_burst": key.rate_limit_burst,
        "created_at": _ms(key.created_at),
        "expires_at": _ms_opt(key.expires_at),
        "is_active": key.is_active,
        "revoked_at": _ms_opt(key.revoked_at),
        "last_used_at": _ms_opt(key.last_used_at),
        "hostnames": None if key.hostnames is None else list(key.hostnames),
        "path_prefixes": None if key.path_prefixes is None else list(key.path_prefixes),
        "max_bytes": key.max_bytes,
        "max_files": key.max_files,
    }


def _names(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


def _key_row(doc: Mapping[str, Any]) -> KeyRow:
    return KeyRow(
        id=doc["_id"],
        name=doc["name"],
        description=doc.get("description"),
        key_hash=doc["key_hash"],
        key_prefix=doc["key_prefix"],
        scopes=tuple(doc.get("scopes") or ()),
        rate_limit=doc.get("rate_limit"),
        rate_limit_burst=doc.get("rate_limit_burst"),
        created_at=doc["created_at"],
        expires_at=doc.get("expires_at"),
        is_active=bool(doc.get("is_active", True)),
        revoked_at=doc.get("revoked_at"),
        last_used_at=doc.get("last_used_at"),
        # Absent in documents stored before restrictions and quotas: none.
        hostnames=_names(doc.get("hostnames")),
        path_prefixes=_names(doc.get("path_prefixes")),
        max_bytes=doc.get("max_bytes"),
        max_files=doc.get("max_files"),
    )


async def _backoff(attempt: int) -> None:
    """A short jittered pause after losing a race, growing with the attempts."""
    await asyncio.sleep(random.uniform(0, 0.0005 * 2 ** min(attempt, 6)))


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


async def _bulk(collection: Any, ops: Sequence[Any], chunk: int) -> set[int]:
    """An unordered bulk write, ``chunk`` operations per command.

    Returns the indexes of the operations that hit a unique index; any other write error is
    raised.
    """
    duplicates: set[int] = set()
    for start in range(0, len(ops), chunk):
        try:
            await collection.bulk_write(list(ops[start : start + chunk]), ordered=False)
        except BulkWriteError as exc:
            duplicates |= {start + i for i in _duplicate_indexes(exc)}
    return duplicates


def _duplicate_indexes(exc: BulkWriteError) -> set[int]:
    """Indexes of the operations that failed on a duplicate key; re-raise any other failure."""
    errors = exc.details.get("writeErrors") or []
    if exc.details.get("writeConcernErrors") or any(e.get("code") != DUPLICATE_KEY for e in errors):
        raise exc
    return {e["index"] for e in errors}


Key = tuple[str, str, bool]  # (hostname, filepath, filepath_escaped)


def _key(doc: Mapping[str, Any]) -> Key:
    return (doc["hostname"], doc["filepath"], bool(doc.get("filepath_escaped")))


# Every record this store writes has the flag, and the migration gives it to older ones; one
# without it -- written by an API replica of the previous version during a rolling upgrade --
# is read as unflagged (a plain name then, as it was); a change to it adds the flag.
_NOT_ESCAPED = {"filepath_escaped": {"$ne": True}}


def _flag(escaped: bool) -> dict[str, Any]:
    """The condition on the flag in a query (where a document without it must match too)."""
    return {"filepath_escaped": True} if escaped else _NOT_ESCAPED


@dataclass(slots=True)
class _Current:
    row: FileRow
    rev: str | None


@dataclass(slots=True)
class _Plan:
    """What one batch does to one (hostname, filepath), computed from the stored record."""

    id: str
    rev: str  # of the record as this plan leaves it
    out: list[tuple[int, FileRow]]  # input index -> row, in input order
    insert: dict[str, Any] | None = None  # a new record
    claim: dict[str, Any] | None = None  # the history entry of the stored version, with `next`
    update: UpdateOne | None = None  # the stored record -> the new state (after the claim)
    history: list[dict[str, Any]] | None = None  # versions replaced within the batch itself


@_translate_errors
class MongoStore:
    kind = "mongodb"

    def __init__(self, url: str, timeout: float = 5.0, connect_timeout: float = 2.0, max_pool: int = 100) -> None:
        millis = max(1, int(timeout * 1000))
        # Every wait a call can meet is bounded by ``timeout``: finding a server, a free pooled
        # connection (pymongo's default is to wait for one forever) and the answer. Opening a
        # connection has its own, shorter bound: a server that accepts no connection is down,
        # while one that answers slowly may only be busy. (pymongo also gives the heartbeat's
        # answer the connect timeout, so it cannot be very short either.) The pool is as large as
        # the process's cap of operations (``admission.py``): a batch's lookups run 16 at a time
        # (``_lookups``), so otherwise one admitted call could hold 16 connections and a process
        # ~100 open queries on the server.
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            url,
            tz_aware=True,
            tzinfo=UTC,
            serverSelectionTimeoutMS=millis,
            waitQueueTimeoutMS=millis,
            connectTimeoutMS=max(1, int(min(connect_timeout, timeout) * 1000)),
            socketTimeoutMS=millis,
            maxPoolSize=max_pool,
        )
        db = self._client.get_default_database(DEFAULT_DATABASE)  # the URL's path, if it names one
        self._db = db
        self._files = db["files"]
        self._history = db["file_history"]
        self._contents = db["contents"]
        self._keys = db["api_keys"]
        self._markers = db["markers"]
        self._buckets = db["rate_buckets"]
        self._leases = db["leases"]
        self._in_reads_all = False  # set by open(): FerretDB answers $in by reading a whole collection

    # -- plumbing ------------------------------------------------------------------------
    async def open(self) -> None:
        # One index per command: FerretDB v1 panics on createIndexes naming 2+ existing indexes.
        indexes = [
            (
                self._files,
                [("hostname", ASCENDING), ("filepath", ASCENDING), ("filepath_escaped", ASCENDING)],
                migrations.FILES_NAME_INDEX,
                True,
            ),
            (self._files, [("sha256", ASCENDING)], "sha256", False),
            (self._files, [("updated_at", ASCENDING)], "updated_at", False),
            (
                self._history,
                [
                    ("hostname", ASCENDING),
                    ("filepath", ASCENDING),
                    ("filepath_escaped", ASCENDING),
                    ("superseded_at", ASCENDING),
                ],
                migrations.HISTORY_NAME_INDEX,
                False,
            ),
            (self._history, [("sha256", ASCENDING)], "sha256", False),
            (self._keys, [("key_hash", ASCENDING)], "key_hash", True),
            (self._contents, [("stored_by", ASCENDING)], "stored_by", False),
            (self._contents, [("pack_id", ASCENDING)], "pack_id", False),
            (self._buckets, [("b", ASCENDING), ("seq", ASCENDING)], "bucket_seq", True),
            (self._leases, [("s", ASCENDING), ("k", ASCENDING)], "s_k", False),
        ]
        for collection, keys, name, unique in indexes:
            await collection.create_index(keys, name=name, unique=unique)
        await migrations.upgrade(self._db, datetime.now(UTC))
        await self._open_webhooks()
        info = await self._client.admin.command("buildInfo")
        self._in_reads_all = "ferretdbFeatures" in info

    async def close(self) -> None:
        await self._client.close()

    async def ping(self) -> None:
        await self._db.command("ping")

    # -- files ---------------------------------------------------------------------------
    async def put_files(self, files: Sequence[FileMetadata], now: datetime) -> list[PutResult]:
        if not files:
            return []
        now = _ms(now)
        pending: dict[Key, list[int]] = {}
        for i, meta in enumerate(files):
            pending.setdefault((meta.hostname, meta.filepath, meta.filepath_escaped), []).append(i)
        rows: list[FileRow | None] = [None] * len(files)
        for attempt in range(_PUT_ROUNDS):
            if attempt:
                await _backoff(attempt)
            pending = await self._put_round(files, pending, now, rows)
            if not pending:
                break
        if pending:
            raise BackendUnavailable("database", f"{len(pending)} file records kept changing concurrently")
        # Content records are read (and created) only once the file records name them: a
        # content garbage collection deletes meanwhile is then either seen as named by gc's
        # re-check, or found missing here and answered "upload required" -- never "stored".
        contents = await self._ensure_contents(files, now)
        return [PutResult(file=row, content=contents[row.meta.sha256]) for row in rows if row is not None]

    async def _ensure_contents(self, files: Sequence[FileMetadata], now: datetime) -> dict[str, ContentRow]:
        """Make sure a content record exists for each sha256 (created unstored); return them all.

        The effect of an upsert with $setOnInsert (FerretDB takes at most 50 upserts a command):
        insert them all, then read those that were there already. Insert first, not read first:
        an insert meets the unique ``_id`` index on FerretDB too, where every read is a scan of
        the whole collection (``_lookups``), so a new content -- most announced ones -- costs no
        read at all, and only a known one pays for its scan.
        """
        first: dict[str, int] = {}
        for meta in files:  # like INSERT OR IGNORE: the first size announced for a sha256 wins
            first.setdefault(meta.sha256, meta.file_size)
        contents: dict[str, ContentRow] = {}
        for attempt in range(_PUT_ROUNDS):
            if attempt:  # garbage collection deleted a known one between its insert and its read
                await _backoff(attempt)
            shas = [sha for sha in first if sha not in contents]
            fresh = [{"_id": sha, "size": first[sha], "stored": False, "first_seen_at": now} for sha in shas]
            known = await self._insert_all(self._contents, fresh)
            contents.update((sha, _content_row(fresh[i])) for i, sha in enumerate(shas) if i not in known)
            if known:
                contents.update(await self._find_contents({shas[i] for i in known}))
            if len(contents) == len(first):
                return contents
        raise BackendUnavailable("database", "content records kept being deleted concurrently")

    async def _lookups(self, collection: Any, filters: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """One equality query per filter, ``_LOOKUPS_AT_ONCE`` at a time: what FerretDB runs in its
        database. It answers an ``$in`` or ``$or`` by reading the whole collection (420 ms for 2
        ids among 5,000 records, against 6 ms an equality), a cost that grows with the catalogue
        and, under load, with the batches that wait for it, until every call times out."""
        found: list[dict[str, Any]] = []
        for chunk in _chunks(filters, _LOOKUPS_AT_ONCE):
            for docs in await asyncio.gather(*(collection.find(f).to_list() for f in chunk)):
                found.extend(docs)
        return found

    def _by_lookups(self, count: int) -> bool:
        """Whether ``count`` keys are found by ``_lookups`` rather than by one ``$in``."""
        return count <= _LOOKUPS_AT_ONCE or self._in_reads_all

    async def _current(self, keys: Collection[Key]) -> dict[Key, _Current]:
        if self._by_lookups(len(keys)):
            # By (hostname, filepath) alone, the flag read here: a record without it is unflagged
            # (_NOT_ESCAPED); an equality on it would cost FerretDB a second test per document.
            names = [{"hostname": h, "filepath": p} for h, p in {(h, p) for h, p, _ in keys}]
            docs = await self._lookups(self._files, names)
            return {_key(d): _Current(_file_row(d), d.get("rev")) for d in docs if _key(d) in keys}
        by_host: dict[str, list[str]] = {}
        for host, path, _ in keys:
            by_host.setdefault(host, []).append(path)
        clauses = [(host, chunk) for host, paths in by_host.items() for chunk in _chunks(paths, _QUERY_CHUNK)]
        found: dict[Key, _Current] = {}
        group: list[tuple[str, Sequence[str]]] = []
        size = 0
        for clause in [*clauses, None]:
            if clause is not None and size + len(clause[1]) <= _QUERY_CHUNK:
                group.append(clause)
                size += len(clause[1])
                continue
            if group:
                filters = [{"hostname": host, "filepath": {"$in": list(paths)}} for host, paths in group]
                query = filters[0] if len(filters) == 1 else {"$or": filters}
                async for doc in self._files.find(query):
                    if _key(doc) in keys:  # not the other name of the same text (escaped or not)
                        found[_key(doc)] = _Current(_file_row(doc), doc.get("rev"))
            if clause is not None:
                group, size = [clause], len(clause[1])
        return found

    @staticmethod
    def _plan(files: Sequence[FileMetadata], indexes: list[int], found: _Current | None, now: datetime) -> _Plan:
        """Apply the batch's versions of one path in input order, as the SQLite backend does."""
        current = found.row if found is not None else None
        replaced: list[FileRow] = []
        out: list[tuple[int, FileRow]] = []
        for i in indexes:
            meta = files[i]
            if current is None:
                current = FileRow(id=new_id(), meta=meta, created_at=now, updated_at=now)
            elif record_changed(current.meta, meta):
                replaced.append(current)
                current = FileRow(id=current.id, meta=meta, created_at=current.created_at, updated_at=now)
            out.append((i, current))
        assert current is not None
        plan = _Plan(id=current.id, rev=new_id(), out=out)
        if found is None:
            plan.insert = {"_id": current.id, **_file_fields(current), "rev": plan.rev}
        elif replaced:
            plan.claim = _history_doc(replaced.pop(0), now, "replaced", _version_id(plan.id, found.rev))
            state = {**current.meta.model_dump(), "updated_at": now, "rev": plan.rev}
            plan.claim["next"] = state
            plan.update = UpdateOne({"_id": plan.id, "rev": found.rev}, {"$set": state})
        else:
            plan.rev = found.rev or ""
        plan.history = [
            _history_doc(old, now, "replaced", f"{plan.id}@{plan.rev}.{n}") for n, old in enumerate(replaced, 1)
        ]
        return plan

    @staticmethod
    async def _insert_all(collection: Any, docs: Sequence[dict[str, Any]]) -> set[int]:
        """Insert (unordered); return the indexes that hit a unique index."""
        return await _bulk(collection, [InsertOne(doc) for doc in docs], _INSERT_CHUNK)

    async def _roll_forward(self, claims: Sequence[tuple[str, str | None]]) -> None:
        """Write the state claimed over (file id, rev) where the record still has that rev."""
        if not claims:
            return
        wanted = {_version_id(file_id, rev): (file_id, rev) for file_id, rev in claims}
        ops: list[UpdateOne | DeleteOne] = []
        if self._by_lookups(len(wanted)):
            docs = await self._lookups(self._history, [{"_id": version} for version in wanted])
        else:
            docs = [doc async for doc in self._history.find({"_id": {"$in": list(wanted)}})]
        for doc in docs:
            file_id, rev = wanted[doc["_id"]]
            if doc.get("event") == "deleted":
                ops.append(DeleteOne({"_id": file_id, "rev": rev}))
            elif doc.get("next"):
                ops.append(UpdateOne({"_id": file_id, "rev": rev}, {"$set": doc["next"]}))
        if ops:  # idempotent: the state the claim's writer writes, and only over `rev`
            await _bulk(self._files, ops, _UPDATE_CHUNK)

    async def _put_round(
        self, files: Sequence[FileMetadata], pending: dict[Key, list[int]], now: datetime, rows: list[FileRow | None]
    ) -> dict[Key, list[int]]:
        """Apply one attempt at the pending keys; return the keys a concurrent writer changed."""
        found = await self._current(pending)
        plans = {key: self._plan(files, idx, found.get(key), now) for key, idx in pending.items()}
        lost: set[Key] = set()

        # New paths: a concurrent put may insert the same path first; then it is an update.
        inserts = [(key, p.insert) for key, p in plans.items() if p.insert is not None]
        lost.update(inserts[i][0] for i in await self._insert_all(self._files, [doc for _, doc in inserts]))

        # Changed paths: claim the stored version (one writer wins it), then write the record.
        claims = [(key, p.claim) for key, p in plans.items() if p.claim is not None]
        taken = {claims[i][0] for i in await self._insert_all(self._history, [doc for _, doc in claims])}
        await self._roll_forward([(plans[key].id, found[key].rev) for key in taken])
        lost |= taken
        # A won claim commits the change: should this write match nothing, the only way past
        # `rev` was a roll-forward of this very claim, so the batch never retries after it.
        updates = [p.update for key, p in plans.items() if p.update is not None and key not in taken]
        await _bulk(self._files, updates, _UPDATE_CHUNK)

        history = [doc for key, p in plans.items() if key not in lost for doc in p.history or ()]
        await self._insert_all(self._history, history)  # fresh ids: nothing to collide with
        for key, p in plans.items():
            if key not in lost:
                for i, row in p.out:
                    rows[i] = row
        return {key: pending[key] for key in pending if key in lost}

    async def _find_contents(self, shas: set[str]) -> dict[str, ContentRow]:
        if self._by_lookups(len(shas)):
            docs = await self._lookups(self._contents, [{"_id": sha} for sha in shas])
            return {doc["_id"]: _content_row(doc) for doc in docs}
        out: dict[str, ContentRow] = {}
        for chunk in _chunks(sorted(shas), _QUERY_CHUNK * 2):
            async for doc in self._contents.find({"_id": {"$in": list(chunk)}}):
                out[doc["_id"]] = _content_row(doc)
        return out

    async def delete_file(self, hostname: str, filepath: str, now: datetime, *, escaped: bool = False) -> bool:
        now = _ms(now)
        for attempt in range(_PUT_ROUNDS):
            docs = await self._files.find({"hostname": hostname, "filepath": filepath}).to_list()
            doc = next((d for d in docs if _key(d)[2] == escaped), None)
            if doc is None:
                return False
            row, rev = _file_row(doc), doc.get("rev")
            try:  # claim the current version, then remove it
                await self._history.insert_one(_history_doc(row, now, "deleted", _version_id(row.id, rev)))
            except DuplicateKeyError:  # a concurrent writer superseded it first
                await self._roll_forward([(row.id, rev)])
                await _backoff(attempt)
                continue
            await self._files.delete_one({"_id": row.id, "rev": rev})  # (or a roll-forward did)
            return True
        raise BackendUnavailable("database", "the file record kept changing concurrently")

    async def file_by_sha(self, sha256: str) -> FileRow | None:
        doc = await self._files.find_one({"sha256": sha256}, sort=[("_id", ASCENDING)])
        return None if doc is None else _file_row(doc)

    async def list_files(self, query: FileQuery) -> list[FileRow]:
        if query.limit <= 0:  # pymongo reads limit 0 as "no limit"
            return []
        where: dict[str, Any] = {}
        if query.hostname is not None:
            where["hostname"] = query.hostname
        if query.path_prefix:
            # Ranges, as in the SQLite backend: no regex escaping, and they use the index.
            ranges: list[dict[str, Any]] = [
                {"filepath": {"$gte": p, "$lt": p + "\U0010ffff"}, **({} if e is None else _flag(e))}
                for p, e in prefix_ranges(query.path_prefix, query.path_prefix_escaped)
            ]
            if len(ranges) == 1:
                where.update(ranges[0])
            else:
                where["$or"] = ranges
        if query.sha256 is not None:
            where["sha256"] = query.sha256
        if query.changed_since is not None:
            where["updated_at"] = {"$gte": _ms(query.changed_since)}
        if query.after_id is not None:
            where["_id"] = {"$gt": query.after_id}
        where = _all_of([where, *_visible_filter(query.visible)]) if query.visible else where
        cursor = self._files.find(where).sort("_id", ASCENDING).limit(query.limit)
        return [_file_row(doc) async for doc in cursor]

    async def visible_shas(self, shas: Collection[str], visible: Visibility) -> set[str]:
        # The records naming each sha256 (few: one per copy) are read by sha256 alone and judged
        # here: FerretDB runs only a plain equality in its database, and would read the whole
        # collection for one with the visibility's $in and $or beside it.
        wanted = sorted(set(shas))
        fields = {"_id": 0, "sha256": 1, "hostname": 1, "filepath": 1}
        docs: list[dict[str, Any]] = []
        if self._in_reads_all:
            for chunk in _chunks(wanted, _LOOKUPS_AT_ONCE):
                for found in await asyncio.gather(
                    *(self._files.find({"sha256": sha}, fields).to_list() for sha in chunk)
                ):
                    docs += found
        else:
            for chunk in _chunks(wanted, _QUERY_CHUNK * 2):
                docs += await self._files.find({"sha256": {"$in": list(chunk)}}, fields).to_list()
        return {d["sha256"] for d in docs if visible.allows(d["hostname"], d["filepath"])}

    async def history(
        self, hostname: str, filepath: str, limit: int, before: datetime | None, *, escaped: bool = False
    ) -> list[HistoryRow]:
        if limit <= 0:
            return []
        where: dict[str, Any] = {"hostname": hostname, "filepath": filepath, **_flag(escaped)}
        if before is not None:
            where["superseded_at"] = {"$lt": _ms(before)}
        cursor = self._history.find(where).sort([("superseded_at", DESCENDING), ("order", DESCENDING)]).limit(limit)
        return [
            HistoryRow(file=_file_row(doc, "id"), superseded_at=doc["superseded_at"], event=doc["event"])
            async for doc in cursor
        ]

    # -- content -------------------------------------------------------------------------
    async def get_content(self, sha256: str) -> ContentRow | None:
        doc = await self._contents.find_one({"_id": sha256})
        return None if doc is None else _content_row(doc)

    async def contents(self, shas: Iterable[str]) -> dict[str, ContentRow]:
        return await self._find_contents(set(shas))

    async def mark_stored(
        self,
        sha256: str,
        size: int,
        mime_type: str | None,
        storage_path: str,
        now: datetime,
        stored_by: str | None = None,
    ) -> ContentRow:
        return await self._mark_stored(StoredContent(sha256, size, mime_type, storage_path, stored_by), now)

    async def _mark_stored(self, item: StoredContent, now: datetime) -> ContentRow:
        now = _ms(now)
        # Where the bytes are (object or pack) is the last upload's: each points at bytes it wrote.
        fields = {
            "size": item.size,
            "stored": True,
            "mime_type": item.mime_type,
            "storage_path": item.storage_path,
            "pack_id": item.pack_id,
            "pack_offset": item.pack_offset,
        }
        doc: Mapping[str, Any] | None
        try:
            # Not stored yet (or no record at all): this upload sets stored_at and stored_by.
            doc = await self._contents.find_one_and_update(
                {"_id": item.sha256, "stored_at": None},
                {
                    "$set": {**fields, "stored_at": now, "stored_by": item.stored_by},
                    "$setOnInsert": {"first_seen_at": now},
                },
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:  # already stored: the first upload keeps stored_at
            doc = await self._contents.find_one_and_update(
                {"_id": item.sha256}, {"$set": fields}, return_document=ReturnDocument.AFTER
            )
            if doc is None:  # garbage collection deleted the record in between: store it anew
                return await self._mark_stored(item, now)
        assert doc is not None  # an upsert returning the document after always finds one
        return _content_row(doc)

    async def mark_stored_many(self, items: Sequence[StoredContent], now: datetime) -> None:
        # Each one is a compare-and-set (FerretDB v1 has no atomic multi-document update): side by side.
        await asyncio.gather(*(self._mark_stored(i, now) for i in items))

    async def stats(self, visible: Visibility | None = None) -> StatsRow:
        if visible is not None:
            return await self._visible_stats(_all_of(_visible_filter(visible)))
        return await self._stats()

    async def _per_host(self, match: dict[str, Any]) -> list[dict[str, Any]]:
        # One $sum per $group: FerretDB v1 answers 0 for a second accumulator in a stage.
        stages: list[dict[str, Any]] = [{"$match": match}] if match else []
        stages.append({"$group": {"_id": "$hostname", "bytes": {"$sum": "$file_size"}}})
        cursor = await self._files.aggregate(stages)
        return await cursor.to_list()

    async def _visible_stats(self, match: dict[str, Any]) -> StatsRow:
        """Totals over a restricted key's records: its contents found through the shas they name."""
        files, hosts, named = await asyncio.gather(
            self._files.count_documents(match),
            self._per_host(match),
            self._files.aggregate([{"$match": match}, {"$group": {"_id": "$sha256"}}]),
        )
        stored = [c for c in (await self._find_contents({d["_id"] async for d in named})).values() if c.stored]
        return StatsRow(
            files=files,
            hosts=len(hosts),
            contents_stored=len(stored),
            stored_bytes=sum(c.size for c in stored),
            logical_bytes=sum(int(d["bytes"]) for d in hosts),
        )

    async def key_usage(self, key_ids: Collection[str]) -> dict[str, KeyUsage]:
        ids = sorted(set(key_ids))
        if not ids:
            return {}
        match = {"stored_by": ids[0] if len(ids) == 1 else {"$in": ids}, "stored": True}

        async def total(of: Any) -> dict[str, int]:  # one accumulator per $group (FerretDB v1)
            cursor = await self._contents.aggregate([{"$match": match}, {"$group": {"_id": "$stored_by", "n": of}}])
            return {d["_id"]: int(d["n"]) async for d in cursor}

        counts, sizes = await asyncio.gather(total({"$sum": 1}), total({"$sum": "$size"}))
        return {k: KeyUsage(n, sizes.get(k, 0)) for k, n in counts.items()}

    async def _stats(self) -> StatsRow:
        async def per_host() -> list[dict[str, Any]]:
            return await self._per_host({})

        async def stored_bytes() -> int:
            cursor = await self._contents.aggregate(
                [{"$match": {"stored": True}}, {"$group": {"_id": None, "bytes": {"$sum": "$size"}}}]
            )
            return sum(int(d["bytes"]) for d in await cursor.to_list())

        files, hosts, contents_stored, stored = await asyncio.gather(
            self._files.count_documents({}),
            per_host(),
            self._contents.count_documents({"stored": True}),
            stored_bytes(),
        )
        return StatsRow(
            files=files,
            hosts=len(hosts),
            contents_stored=contents_stored,
            stored_bytes=stored,
            logical_bytes=sum(int(d["bytes"]) for d in hosts),
        )

    # -- integrity -----------------------------------------------------------------------
    async def iter_contents(self, batch: int = 1000) -> AsyncIterator[list[ContentRow]]:
        after = ""
        while True:
            cursor = self._contents.find({"_id": {"$gt": after}}).sort("_id", ASCENDING).limit(batch)
            rows = [_content_row(doc) async for doc in cursor]
            if not rows:
                return
            yield rows
            after = rows[-1].sha256

    async def _sha_page(self, collection: Any, after: str, limit: int) -> tuple[list[str], str | None]:
        """The next ``limit`` sha256 values of a collection's sha256 index after ``after``
        (repeats included), and how far they reach (None: the collection is exhausted)."""
        cursor = (
            collection.find({"sha256": {"$gt": after}}, {"_id": 0, "sha256": 1}).sort("sha256", ASCENDING).limit(limit)
        )
        shas = [doc["sha256"] async for doc in cursor]
        return shas, (shas[-1] if len(shas) == limit else None)

    async def iter_referenced(self, batch: int = 1000) -> AsyncIterator[list[str]]:
        # A merge of two sorted scans: each page is complete up to the lower of the two
        # reaches, so every distinct sha256 comes out once, in order.
        after = ""
        while True:
            (files, reach_f), (history, reach_h) = await asyncio.gather(
                self._sha_page(self._files, after, batch), self._sha_page(self._history, after, batch)
            )
            reaches = [r for r in (reach_f, reach_h) if r is not None]
            bound = min(reaches) if reaches else None
            shas = sorted({s for s in (*files, *history) if bound is None or s <= bound})[:batch]
            if not shas:
                return
            yield shas
            after = shas[-1]

    async def referenced(self, shas: Collection[str]) -> set[str]:
        async def named_in(collection: Any, chunk: Sequence[str]) -> set[str]:
            cursor = await collection.aggregate(
                [{"$match": {"sha256": {"$in": list(chunk)}}}, {"$group": {"_id": "$sha256"}}]
            )
            return {doc["_id"] async for doc in cursor}

        found: set[str] = set()
        for chunk in _chunks(sorted(set(shas)), _QUERY_CHUNK * 2):
            for part in await asyncio.gather(named_in(self._files, chunk), named_in(self._history, chunk)):
                found |= part
        return found

    async def delete_contents_if_unchanged(self, rows: Sequence[ContentRow]) -> set[str]:
        # A delete is conditional on the whole document as read; whether each matched is read
        # back afterwards (a record recreated meanwhile counts as not deleted: the safe side).
        for chunk in _chunks(rows, _UPDATE_CHUNK):
            await self._contents.delete_many(
                {
                    "$or": [
                        {"_id": r.sha256, "stored": r.stored, "size": r.size, "stored_at": _ms_opt(r.stored_at)}
                        for r in chunk
                    ]
                }
            )
        shas = {r.sha256 for r in rows}
        return shas - set(await self._find_contents(shas))

    async def restore_contents(self, rows: Sequence[ContentRow]) -> None:
        docs = [
            {
                "_id": r.sha256,
                "size": r.size,
                "stored": r.stored,
                "first_seen_at": _ms(r.first_seen_at),
                "stored_at": _ms_opt(r.stored_at),
                "mime_type": r.mime_type,
                "storage_path": r.storage_path,
                "stored_by": r.stored_by,
                "pack_id": r.pack_id,
                "pack_offset": r.pack_offset,
            }
            for r in rows
        ]
        await self._insert_all(self._contents, docs)  # one recreated meanwhile stays as it is

    # -- packs -----------------------------------------------------------------------------
    async def pack_usage(self, pack_ids: Collection[str]) -> dict[str, PackUsage]:
        # One equality query per pack (the pack_id index): FerretDB answers $in by reading everything.
        async def usage(pack_id: str) -> tuple[str, list[int]]:
            cursor = self._contents.find({"pack_id": pack_id, "stored": True}, {"size": 1})
            return pack_id, [int(doc["size"]) async for doc in cursor]

        out: dict[str, PackUsage] = {}
        for chunk in _chunks(sorted(set(pack_ids)), _UPDATE_CHUNK):
            for pack_id, sizes in await asyncio.gather(*(usage(p) for p in chunk)):
                if sizes:
                    out[pack_id] = PackUsage(len(sizes), sum(sizes))
        return out

    async def packed_contents(self, pack_id: str) -> list[ContentRow]:
        rows = [_content_row(doc) async for doc in self._contents.find({"pack_id": pack_id, "stored": True})]
        return sorted(rows, key=lambda r: r.pack_offset or 0)

    async def move_packed(self, moves: Sequence[PackMove]) -> set[str]:
        async def move(m: PackMove) -> str | None:
            done = await self._contents.update_one(
                {"_id": m.sha256, "pack_id": m.from_pack, "pack_offset": m.from_offset, "stored": True},
                {"$set": {"pack_id": m.to_pack, "pack_offset": m.to_offset, "storage_path": m.storage_path}},
            )
            return m.sha256 if done.modified_count else None

        moved: set[str] = set()
        for chunk in _chunks(list(moves), _UPDATE_CHUNK):
            moved.update(sha for sha in await asyncio.gather(*(move(m) for m in chunk)) if sha is not None)
        return moved

    # -- keys ----------------------------------------------------------------------------
    async def insert_key(self, key: KeyRow) -> None:
        await self._keys.insert_one(_key_doc(key))

    async def key_by_hash(self, key_hash: str) -> KeyRow | None:
        doc = await self._keys.find_one({"key_hash": key_hash})
        return None if doc is None else _key_row(doc)

    async def get_key(self, key_id: str) -> KeyRow | None:
        doc = await self._keys.find_one({"_id": key_id})
        return None if doc is None else _key_row(doc)

    async def list_keys(self) -> list[KeyRow]:
        return [_key_row(doc) async for doc in self._keys.find().sort("_id", ASCENDING)]

    async def revoke_key(self, key_id: str, now: datetime) -> bool:
        # COALESCE(revoked_at, now) without a pipeline update: set it only where it is unset.
        first = await self._keys.update_one(
            {"_id": key_id, "revoked_at": None}, {"$set": {"is_active": False, "revoked_at": _ms(now)}}
        )
        if first.matched_count:
            return True
        again = await self._keys.update_one({"_id": key_id}, {"$set": {"is_active": False}})
        return again.matched_count > 0

    async def delete_key(self, key_id: str) -> bool:
        return (await self._keys.delete_one({"_id": key_id})).deleted_count > 0

    async def touch_keys(self, last_used: Mapping[str, datetime]) -> None:
        if last_used:
            ops = [
                UpdateOne({"_id": key_id}, {"$max": {"last_used_at": _ms(when)}}) for key_id, when in last_used.items()
            ]
            await _bulk(self._keys, ops, _UPDATE_CHUNK)

    async def claim(self, marker: str, now: datetime) -> bool:
        try:
            await self._markers.insert_one({"_id": marker, "created_at": _ms(now)})
        except DuplicateKeyError:
            return False
        return True

    # -- rate limits ---------------------------------------------------------------------
    async def take_tokens(self, bucket: str, rate: float, burst: int, want: int, now: float) -> TokenGrant:
        # Compare-and-set as an insert: state seq+1, computed from state seq, exists at most once
        # (unique (b, seq)). Pruning keeps the two newest states and any younger than a minute,
        # so a state number could only be reused by a writer that read its predecessor more
        # than a minute before inserting: far beyond any timeout of this client.
        for attempt in range(_CAS_ATTEMPTS):
            head = await self._buckets.find_one({"b": bucket}, sort=[("seq", DESCENDING)])
            seq, tat = (0, 0.0) if head is None else (int(head["seq"]), float(head["tat"]))
            granted, new_tat, retry_after = gcra(tat, now, rate, burst, want)
            if not granted:
                return TokenGrant(granted=0, retry_after=retry_after)
            try:
                await self._buckets.insert_one(
                    {"_id": new_id(), "b": bucket, "seq": seq + 1, "tat": new_tat, "at": now}
                )
            except DuplicateKeyError:  # another request (or replica) took from this state first
                await _backoff(attempt)
                continue
            if (seq + 1) % _PRUNE_EVERY == 0:
                await self._buckets.delete_many({"b": bucket, "seq": {"$lt": seq}, "at": {"$lt": now - _PRUNE_AGE}})
            return TokenGrant(granted=granted)
        # Still contended after all attempts: refuse for now rather than over-grant.
        return TokenGrant(granted=0, retry_after=min(1.0, 1.0 / rate))

    # -- leases: per name a chain of states ``"<name>:<k>"`` (``s`` = name), unique by _id --------
    # Taking a lease inserts state k+1 computed from state k, the one compare-and-set FerretDB v1
    # makes atomic (as the rate buckets do).
    async def take_lease(self, name: str, holder: str, now: datetime, until: datetime) -> bool:
        now, until = _ms(now), _ms(until)
        head = await self._leases.find_one({"s": name}, sort=[("k", DESCENDING)])
        if head is not None and head["until"] > now:
            if head["holder"] != holder:
                return False
            await self._leases.update_one({"_id": head["_id"]}, {"$set": {"until": until}})  # our own state
            return True
        k = 0 if head is None else int(head["k"]) + 1
        try:
            await self._leases.insert_one({"_id": f"{name}:{k}", "s": name, "k": k, "holder": holder, "until": until})
        except DuplicateKeyError:  # another process took it from the same state first
            return False
        # States older than a minute go, never the newest two: a state number could only be
        # reused by a taker that read its predecessor a minute before inserting.
        await self._leases.delete_many({"s": name, "k": {"$lt": k - 1}, "until": {"$lt": now - timedelta(minutes=1)}})
        return True

    async def release_lease(self, name: str, holder: str) -> None:
        head = await self._leases.find_one({"s": name}, sort=[("k", DESCENDING)])
        if head is not None and head["holder"] == holder:
            await self._leases.update_one({"_id": head["_id"]}, {"$set": {"until": datetime.fromtimestamp(0, UTC)}})

    # -- webhooks (putplace_api.webhooks) -------------------------------------------------
    # Collections: ``webhook_subscriptions`` (_id = id), ``webhook_deliveries`` (_id = delivery
    # id, ``s`` = subscription id); a queue's lease is ``delivery_lease(id)`` in ``leases``.

    async def _open_webhooks(self) -> None:
        # One index per command, as above.
        deliveries = self._db["webhook_deliveries"]
        await deliveries.create_index([("s", ASCENDING), ("status", ASCENDING), ("_id", ASCENDING)], name="s_status_id")
        await deliveries.create_index([("status", ASCENDING), ("_id", ASCENDING)], name="status_id")
        await self._db["upload_sessions"].create_index([("expires_at", ASCENDING)], name="expires_at")

    async def insert_subscription(self, row: SubscriptionRow) -> None:
        await self._db["webhook_subscriptions"].insert_one(
            {
                "_id": row.id,
                "url": row.url,
                "events": list(row.events),
                "secret": row.secret,
                "description": row.description,
                "created_at": _ms(row.created_at),
                "active": row.active,
            }
        )

    async def list_subscriptions(self) -> list[SubscriptionRow]:
        return [
            SubscriptionRow(
                id=doc["_id"],
                url=doc["url"],
                events=tuple(doc.get("events") or ()),
                secret=doc["secret"],
                description=doc.get("description"),
                created_at=doc["created_at"],
                active=bool(doc.get("active", True)),
            )
            async for doc in self._db["webhook_subscriptions"].find().sort("_id", ASCENDING)
        ]

    async def delete_subscription(self, subscription_id: str) -> bool:
        await self._db["webhook_deliveries"].delete_many({"s": subscription_id})
        await self._leases.delete_many({"s": delivery_lease(subscription_id)})
        return (await self._db["webhook_subscriptions"].delete_one({"_id": subscription_id})).deleted_count > 0

    async def enqueue_deliveries(self, rows: Sequence[DeliveryRow]) -> None:
        docs = [
            {
                "_id": r.id,
                "s": r.subscription_id,
                "event": r.event,
                "body": r.body,
                "created_at": _ms(r.created_at),
                "next_at": _ms(r.next_attempt_at),
                "attempts": r.attempts,
                "status": r.status,
                "last_error": r.last_error,
            }
            for r in rows
        ]
        await self._insert_all(self._db["webhook_deliveries"], docs)

    async def delivery_head(self, subscription_id: str) -> DeliveryRow | None:
        doc = await self._db["webhook_deliveries"].find_one(
            {"s": subscription_id, "status": DELIVERY_PENDING}, sort=[("_id", ASCENDING)]
        )
        return None if doc is None else _delivery_row(doc)

    async def delivery_done(self, delivery_id: str) -> None:
        await self._db["webhook_deliveries"].delete_one({"_id": delivery_id})

    async def delivery_failed(
        self, delivery_id: str, attempts: int, next_attempt_at: datetime, error: str, dead: bool
    ) -> None:
        await self._db["webhook_deliveries"].update_one(
            {"_id": delivery_id},
            {
                "$set": {
                    "attempts": attempts,
                    "next_at": _ms(next_attempt_at),
                    "last_error": error,
                    "status": DELIVERY_DEAD if dead else DELIVERY_PENDING,
                }
            },
        )

    async def dead_deliveries(self, after_id: str | None, limit: int) -> list[DeliveryRow]:
        if limit <= 0:
            return []
        cursor = (
            self._db["webhook_deliveries"]
            .find({"status": DELIVERY_DEAD, "_id": {"$gt": after_id or ""}})
            .sort("_id", ASCENDING)
            .limit(limit)
        )
        return [_delivery_row(doc) async for doc in cursor]

    async def replay_deliveries(self, delivery_ids: Collection[str] | None, now: datetime) -> int:
        deliveries = self._db["webhook_deliveries"]
        fresh = {"$set": {"status": DELIVERY_PENDING, "attempts": 0, "next_at": _ms(now)}}
        if delivery_ids is None:
            return int((await deliveries.update_many({"status": DELIVERY_DEAD}, fresh)).modified_count)
        replayed = 0
        for delivery_id in delivery_ids:  # equalities: what FerretDB runs in its database
            result = await deliveries.update_one({"_id": delivery_id, "status": DELIVERY_DEAD}, fresh)
            replayed += result.modified_count
        return replayed

    async def delivery_counts(self) -> dict[str, int]:
        deliveries = self._db["webhook_deliveries"]
        pending, dead = await asyncio.gather(
            deliveries.count_documents({"status": DELIVERY_PENDING}),
            deliveries.count_documents({"status": DELIVERY_DEAD}),
        )
        return {DELIVERY_PENDING: pending, DELIVERY_DEAD: dead}

    async def purge_deliveries(self, keep: Collection[str], before: datetime) -> int:
        deliveries = self._db["webhook_deliveries"]
        cursor = await deliveries.aggregate([{"$group": {"_id": "$s"}}])
        gone = [doc["_id"] async for doc in cursor if doc["_id"] not in set(keep)]
        purged = 0
        for sub in gone:  # equalities, as FerretDB likes them
            result = await deliveries.delete_many({"s": sub, "created_at": {"$lt": _ms(before)}})
            purged += result.deleted_count
        return purged

    # -- upload sessions (putplace_api.sessions): ``upload_sessions``, _id = session id ------
    async def insert_session(self, row: SessionRow) -> None:
        doc = {f.name: getattr(row, f.name) for f in fields(SessionRow) if f.name != "id"}
        doc |= {"_id": row.id, "created_at": _ms(row.created_at), "expires_at": _ms(row.expires_at)}
        await self._db["upload_sessions"].insert_one(doc)

    async def get_session(self, session_id: str) -> SessionRow | None:
        doc = await self._db["upload_sessions"].find_one({"_id": session_id})
        return None if doc is None else _session_row(doc)

    async def touch_session(self, session_id: str, expires_at: datetime) -> None:
        await self._db["upload_sessions"].update_one({"_id": session_id}, {"$max": {"expires_at": _ms(expires_at)}})

    async def delete_session(self, session_id: str) -> bool:
        return (await self._db["upload_sessions"].delete_one({"_id": session_id})).deleted_count > 0

    async def expired_sessions(self, now: datetime, limit: int) -> list[SessionRow]:
        cursor = self._db["upload_sessions"].find({"expires_at": {"$lt": now}}).sort("expires_at", ASCENDING)
        return [_session_row(doc) async for doc in cursor.limit(limit)]

    # -- console queries (store.base.ConsoleStore) -----------------------------------------
    async def list_nodes(self, after: str | None, limit: int) -> list[str]:
        # A skip scan on the hostname_filepath index (one find per host), not a $group over
        # every record.
        nodes: list[str] = []
        last = after
        while len(nodes) < limit:
            where: dict[str, Any] = {} if last is None else {"hostname": {"$gt": last}}
            doc = await self._files.find_one(where, {"hostname": 1}, sort=[("hostname", ASCENDING)])
            if doc is None:
                break
            last = str(doc["hostname"])
            nodes.append(last)
        return nodes

    async def paths_after(self, hostname: str, lower: str, upper: str, limit: int) -> list[FileRow]:
        if limit <= 0:
            return []
        where = {"hostname": hostname, "filepath": {"$gt": lower, "$lt": upper}}
        cursor = self._files.find(where).sort([("hostname", ASCENDING), ("filepath", ASCENDING)]).limit(limit)
        return [_file_row(doc) async for doc in cursor]

    async def current_file(self, hostname: str, filepath: str, escaped: bool = False) -> FileRow | None:
        # Both flags' records of the text, judged here (a record of an old replica has no flag:
        # plain), as the other lookups by name do.
        async for doc in self._files.find({"hostname": hostname, "filepath": filepath}):
            if bool(doc.get("filepath_escaped", False)) == escaped:
                return _file_row(doc)
        return None

    async def search_files(self, pattern: str, hostname: str | None, after_id: str | None, limit: int) -> list[FileRow]:
        if limit <= 0:
            return []
        where: dict[str, Any] = {"filepath": {"$regex": glob_to_regex(pattern), "$options": "s"}}
        if hostname is not None:
            where["hostname"] = hostname
        if after_id is not None:
            where["_id"] = {"$gt": after_id}
        cursor = self._files.find(where).sort("_id", ASCENDING).limit(limit)
        return [_file_row(doc) async for doc in cursor]

    async def recent_files(self, before: tuple[datetime, str] | None, limit: int) -> list[FileRow]:
        if limit <= 0:
            return []
        where: dict[str, Any] = {}
        if before is not None:
            at, after = _ms(before[0]), before[1]
            where["$or"] = [{"updated_at": {"$lt": at}}, {"updated_at": at, "_id": {"$lt": after}}]
        cursor = self._files.find(where).sort([("updated_at", DESCENDING), ("_id", DESCENDING)]).limit(limit)
        return [_file_row(doc) async for doc in cursor]


def _session_row(doc: Mapping[str, Any]) -> SessionRow:
    return SessionRow(id=doc["_id"], **{k: v for k, v in doc.items() if k != "_id"})


def _delivery_row(doc: Mapping[str, Any]) -> DeliveryRow:
    return DeliveryRow(
        id=doc["_id"],
        subscription_id=doc["s"],
        event=doc["event"],
        body=doc["body"],
        created_at=doc["created_at"],
        next_attempt_at=doc["next_at"],
        attempts=int(doc.get("attempts", 0)),
        status=doc["status"],
        last_error=doc.get("last_error"),
    )


_CONSOLE: type[ConsoleStore] = MongoStore  # mypy checks that the backend answers the console's queries
