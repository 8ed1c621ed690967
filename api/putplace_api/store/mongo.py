"""MongoDB metadata store: the backend for several API replicas sharing one database.

It implements the ``MetadataStore`` protocol with pymongo's native async client and behaves
like the SQLite reference backend (``sqlite.py``); the contract suite
(``tests/api/test_store_contract.py``) runs unchanged against both.

Collections (ids are strings, so ordering and cursors are those of the SQLite backend):

- ``files``: the current record of each (hostname, filepath); ``_id`` is ``new_id()`` (a
  24-hex ObjectId *string*, sortable by creation time); ``rev``, a fresh token on every write.
- ``file_history``: earlier versions (``id`` = the file's id, ``superseded_at``, ``event``).
  The entry archiving stored version ``rev`` of file ``id`` has ``_id = "<id>@<rev>"``.
- ``contents``: ``_id`` = sha256. ``api_keys``: ``_id`` = key id. ``markers``: ``_id`` = name.
- ``rate_buckets``: one document per state of a bucket: ``b`` (the bucket), ``seq``, ``tat``.

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
    ``"<id>@<rev>"``: one writer wins each version. The winner then writes the current record
    (conditionally on ``rev``, which real MongoDB honours); the entry carries the new state
    (``next``) until then, so if the winner dies in between, the next writer rolls it forward.
  - a rate bucket is a chain of states, unique on (bucket, seq): taking tokens inserts the
    state ``seq + 1`` computed from state ``seq``. States are pruned once a minute old.

  The remaining FerretDB-only races are narrow and harmless in practice: two concurrent first
  uploads of one content may both set ``stored_at``; concurrent ``touch_keys`` may not keep
  the latest time; revoking a key twice at once may keep either time.
- aggregation limited to ``$match`` and ``$group`` with ``$sum``, and *one* accumulator per
  ``$group``: FerretDB v1.24 answers 0 for every ``$sum`` after the first in the same stage.

Connection problems become ``BackendUnavailable("database", ...)`` in one place
(``_translate_errors``); every other error (a duplicate key id, a bad argument) propagates
unchanged, since it is the caller's bug.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, DeleteOne, IndexModel, InsertOne, ReturnDocument, UpdateOne
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    WTimeoutError,
)

from putplace_client.models import FileMetadata

from putplace_api.errors import BackendUnavailable
from putplace_api.store.base import (
    FILE_FIELDS,
    ContentRow,
    FileQuery,
    FileRow,
    HistoryRow,
    KeyRow,
    PutResult,
    StatsRow,
    TokenGrant,
    gcra,
    new_id,
    record_changed,
)

__all__ = ["MongoStore"]

T = TypeVar("T")

DEFAULT_DATABASE = "putplace"
DUPLICATE_KEY = 11000
_QUERY_CHUNK = 500  # keys per find: stays far below the 16 MB command limit with long paths
_PUT_ROUNDS = 32  # re-plans of the records of a batch that a concurrent writer changed
_CAS_ATTEMPTS = 100  # compare-and-set attempts on one rate bucket
_PRUNE_EVERY = 32  # rate bucket states: prune old ones at every 32nd state...
_PRUNE_AGE = 60.0  # ...those older than this (seconds) and not among the two newest
_UNAVAILABLE = (ConnectionFailure, ExecutionTimeout, WTimeoutError)  # ConnectionFailure covers
# ServerSelectionTimeoutError, AutoReconnect, NetworkTimeout and WaitQueueTimeoutError.


# -- the error boundary ------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    text = str(exc).split(", Timeout:")[0]  # server selection errors append the topology
    return text if len(text) <= 300 else text[:297] + "..."


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    # A bulk write whose only failure is the write concern timing out.
    return (
        isinstance(exc, BulkWriteError)
        and not exc.details.get("writeErrors")
        and bool(exc.details.get("writeConcernErrors"))
    )


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


def _translate_errors(cls: type[T]) -> type[T]:
    """The one boundary: wrap every public coroutine method of the class."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(member):
            setattr(cls, name, _translating(member))
    return cls


# -- documents <-> rows ------------------------------------------------------------------


def _ms(value: datetime) -> datetime:
    """Truncate to what a BSON date keeps (milliseconds)."""
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _ms_opt(value: datetime | None) -> datetime | None:
    return None if value is None else _ms(value)


def _meta(doc: Mapping[str, Any]) -> FileMetadata:
    return FileMetadata.model_validate({f: doc[f] for f in FILE_FIELDS})


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
        "_id": history_id, "id": old.id, **_file_fields(old),
        "superseded_at": now, "event": event, "order": new_id(),
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
    )


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
    }


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
    )


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _duplicate_indexes(exc: BulkWriteError) -> set[int]:
    """Indexes of the operations that failed on a duplicate key; re-raise any other failure."""
    errors = exc.details.get("writeErrors") or []
    if exc.details.get("writeConcernErrors") or any(e.get("code") != DUPLICATE_KEY for e in errors):
        raise exc
    return {e["index"] for e in errors}


Key = tuple[str, str]  # (hostname, filepath)


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

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        millis = max(1, int(timeout * 1000))
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            url,
            tz_aware=True,
            tzinfo=UTC,
            serverSelectionTimeoutMS=millis,
            connectTimeoutMS=millis,
            socketTimeoutMS=millis,
        )
        db = self._client.get_default_database(DEFAULT_DATABASE)  # the URL's path, if it names one
        self._db = db
        self._files = db["files"]
        self._history = db["file_history"]
        self._contents = db["contents"]
        self._keys = db["api_keys"]
        self._markers = db["markers"]
        self._buckets = db["rate_buckets"]

    # -- plumbing ------------------------------------------------------------------------
    async def open(self) -> None:
        await self._files.create_indexes(
            [
                IndexModel([("hostname", ASCENDING), ("filepath", ASCENDING)], unique=True, name="hostname_filepath"),
                IndexModel([("sha256", ASCENDING)], name="sha256"),
                IndexModel([("updated_at", ASCENDING)], name="updated_at"),
            ]
        )
        await self._history.create_indexes(
            [
                IndexModel(
                    [("hostname", ASCENDING), ("filepath", ASCENDING), ("superseded_at", ASCENDING)],
                    name="hostname_filepath_superseded_at",
                ),
                IndexModel([("sha256", ASCENDING)], name="sha256"),
            ]
        )
        await self._keys.create_indexes([IndexModel([("key_hash", ASCENDING)], unique=True, name="key_hash")])

    async def close(self) -> None:
        await self._client.close()

    async def ping(self) -> None:
        await self._db.command("ping")

    # -- files ---------------------------------------------------------------------------
    async def put_files(self, files: Sequence[FileMetadata], now: datetime) -> list[PutResult]:
        if not files:
            return []
        now = _ms(now)
        await self._ensure_contents(files, now)
        pending: dict[Key, list[int]] = {}
        for i, meta in enumerate(files):
            pending.setdefault((meta.hostname, meta.filepath), []).append(i)
        rows: list[FileRow | None] = [None] * len(files)
        for _ in range(_PUT_ROUNDS):
            if not pending:
                break
            pending = await self._put_round(files, pending, now, rows)
        if pending:
            raise BackendUnavailable("database", f"{len(pending)} file records kept changing concurrently")
        contents = await self._find_contents({meta.sha256 for meta in files})
        return [PutResult(file=row, content=contents[row.meta.sha256]) for row in rows if row is not None]

    async def _ensure_contents(self, files: Sequence[FileMetadata], now: datetime) -> None:
        first: dict[str, int] = {}
        for meta in files:  # like INSERT OR IGNORE: the first size announced for a sha256 wins
            first.setdefault(meta.sha256, meta.file_size)
        ops = [
            UpdateOne(
                {"_id": sha}, {"$setOnInsert": {"size": size, "stored": False, "first_seen_at": now}}, upsert=True
            )
            for sha, size in first.items()
        ]
        try:
            await self._contents.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            _duplicate_indexes(exc)  # a concurrent upsert created it first: it exists, as wanted

    async def _current(self, keys: Iterable[Key]) -> dict[Key, _Current]:
        by_host: dict[str, list[str]] = {}
        for host, path in keys:
            by_host.setdefault(host, []).append(path)
        clauses = [
            {"hostname": host, "filepath": {"$in": list(chunk)}}
            for host, paths in by_host.items()
            for chunk in _chunks(paths, _QUERY_CHUNK)
        ]
        found: dict[Key, _Current] = {}
        group: list[dict[str, Any]] = []
        size = 0
        for clause in [*clauses, None]:
            if clause is not None and size + len(clause["filepath"]["$in"]) <= _QUERY_CHUNK:
                group.append(clause)
                size += len(clause["filepath"]["$in"])
                continue
            if group:
                query = group[0] if len(group) == 1 else {"$or": group}
                async for doc in self._files.find(query):
                    found[(doc["hostname"], doc["filepath"])] = _Current(_file_row(doc), doc.get("rev"))
            if clause is not None:
                group, size = [clause], len(clause["filepath"]["$in"])
        return found

    @staticmethod
    def _plan(files: Sequence[FileMetadata], indexes: list[int], found: _Current | None, now: datetime) -> _Plan:
        plan = _Plan(out=[], history=[], rev=new_id())
        current = found.row if found is not None else None
        dirty = False
        for i in indexes:
            meta = files[i]
            if current is None:
                current = FileRow(id=new_id(), meta=meta, created_at=now, updated_at=now)
                dirty = True
            elif record_changed(current.meta, meta):
                plan.history.append(_history_doc(current, now, "replaced"))
                current = FileRow(id=current.id, meta=meta, created_at=current.created_at, updated_at=now)
                dirty = True
            plan.out.append((i, current))
        assert current is not None
        plan.id = current.id
        if found is None:
            plan.insert = {"_id": current.id, **_file_fields(current), "rev": plan.rev}
        elif dirty:
            plan.update = UpdateOne(
                {"_id": current.id, "rev": found.rev},
                {"$set": {**current.meta.model_dump(), "updated_at": now, "rev": plan.rev}},
            )
        return plan

    async def _put_round(
        self, files: Sequence[FileMetadata], pending: dict[Key, list[int]], now: datetime, rows: list[FileRow | None]
    ) -> dict[Key, list[int]]:
        """Apply one attempt at the pending keys; return the keys a concurrent writer changed."""
        found = await self._current(pending)
        plans = {key: self._plan(files, idx, found.get(key), now) for key, idx in pending.items()}
        lost: set[Key] = set()

        inserts = [(key, p.insert) for key, p in plans.items() if p.insert is not None]
        if inserts:
            try:
                await self._files.bulk_write([InsertOne(doc) for _, doc in inserts], ordered=False)
            except BulkWriteError as exc:  # a concurrent put inserted the path first: update it
                lost.update(inserts[i][0] for i in _duplicate_indexes(exc))

        updates = [(key, p) for key, p in plans.items() if p.update is not None]
        if updates:
            result = await self._files.bulk_write([p.update for _, p in updates], ordered=False)
            if result.matched_count < len(updates):  # someone changed or deleted a record since we read it
                ids = [p.id for _, p in updates]
                revs = {d["_id"]: d.get("rev") async for d in self._files.find({"_id": {"$in": ids}}, {"rev": 1})}
                lost.update(key for key, p in updates if revs.get(p.id) != p.rev)

        # History after the current record changed: a lost race writes none, so no version is
        # archived twice (without transactions, a crash in between can lose one history entry).
        history = [doc for key, p in plans.items() if key not in lost for doc in p.history]
        if history:
            await self._history.insert_many(history, ordered=True)
        for key, p in plans.items():
            if key not in lost:
                for i, row in p.out:
                    rows[i] = row
        return {key: pending[key] for key in pending if key in lost}

    async def _find_contents(self, shas: set[str]) -> dict[str, ContentRow]:
        out: dict[str, ContentRow] = {}
        for chunk in _chunks(sorted(shas), _QUERY_CHUNK * 2):
            async for doc in self._contents.find({"_id": {"$in": list(chunk)}}):
                out[doc["_id"]] = _content_row(doc)
        return out

    async def delete_file(self, hostname: str, filepath: str, now: datetime) -> bool:
        doc = await self._files.find_one_and_delete({"hostname": hostname, "filepath": filepath})
        if doc is None:
            return False
        await self._history.insert_one(_history_doc(_file_row(doc), _ms(now), "deleted"))
        return True

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
            # A range, as in the SQLite backend: no regex escaping, and it uses the index.
            where["filepath"] = {"$gte": query.path_prefix, "$lt": query.path_prefix + "\U0010ffff"}
        if query.sha256 is not None:
            where["sha256"] = query.sha256
        if query.changed_since is not None:
            where["updated_at"] = {"$gte": _ms(query.changed_since)}
        if query.after_id is not None:
            where["_id"] = {"$gt": query.after_id}
        cursor = self._files.find(where).sort("_id", ASCENDING).limit(query.limit)
        return [_file_row(doc) async for doc in cursor]

    async def history(self, hostname: str, filepath: str, limit: int, before: datetime | None) -> list[HistoryRow]:
        if limit <= 0:
            return []
        where: dict[str, Any] = {"hostname": hostname, "filepath": filepath}
        if before is not None:
            where["superseded_at"] = {"$lt": _ms(before)}
        cursor = (
            self._history.find(where).sort([("superseded_at", DESCENDING), ("_id", DESCENDING)]).limit(limit)
        )
        return [
            HistoryRow(file=_file_row(doc, "id"), superseded_at=doc["superseded_at"], event=doc["event"])
            async for doc in cursor
        ]

    # -- content -------------------------------------------------------------------------
    async def get_content(self, sha256: str) -> ContentRow | None:
        doc = await self._contents.find_one({"_id": sha256})
        return None if doc is None else _content_row(doc)

    async def mark_stored(
        self, sha256: str, size: int, mime_type: str | None, storage_path: str, now: datetime
    ) -> ContentRow:
        now = _ms(now)
        fields = {"size": size, "stored": True, "mime_type": mime_type, "storage_path": storage_path}
        doc: Mapping[str, Any] | None
        try:
            # Not stored yet (or no record at all): this upload sets stored_at.
            doc = await self._contents.find_one_and_update(
                {"_id": sha256, "stored_at": None},
                {"$set": {**fields, "stored_at": now}, "$setOnInsert": {"first_seen_at": now}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:  # already stored: the first upload keeps stored_at
            doc = await self._contents.find_one_and_update(
                {"_id": sha256}, {"$set": fields}, return_document=ReturnDocument.AFTER
            )
        assert doc is not None  # content records are never deleted
        return _content_row(doc)

    async def stats(self) -> StatsRow:
        # One $sum per $group: FerretDB v1 answers 0 for a second accumulator in a stage.
        async def per_host() -> list[dict[str, Any]]:
            cursor = await self._files.aggregate([{"$group": {"_id": "$hostname", "bytes": {"$sum": "$file_size"}}}])
            return await cursor.to_list()

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
            ops = [UpdateOne({"_id": key_id}, {"$max": {"last_used_at": _ms(when)}}) for key_id, when in last_used.items()]
            await self._keys.bulk_write(ops, ordered=False)

    async def claim(self, marker: str, now: datetime) -> bool:
        try:
            await self._markers.insert_one({"_id": marker, "created_at": _ms(now)})
        except DuplicateKeyError:
            return False
        return True

    # -- rate limits ---------------------------------------------------------------------
    async def take_tokens(self, bucket: str, rate: float, burst: int, want: int, now: float) -> TokenGrant:
        for attempt in range(_CAS_ATTEMPTS):
            doc = await self._buckets.find_one({"_id": bucket})
            old = None if doc is None else doc["tat"]
            granted, tat, retry_after = gcra(0.0 if old is None else float(old), now, rate, burst, want)
            if not granted:
                return TokenGrant(granted=0, retry_after=retry_after)
            if doc is None:
                try:
                    await self._buckets.insert_one({"_id": bucket, "tat": tat})
                    return TokenGrant(granted=granted)
                except DuplicateKeyError:
                    pass  # another replica created the bucket first
            elif (await self._buckets.update_one({"_id": bucket, "tat": old}, {"$set": {"tat": tat}})).matched_count:
                return TokenGrant(granted=granted)
            # Lost the race: back off a little (jittered) and read the bucket again.
            await asyncio.sleep(random.uniform(0, 0.0005 * 2 ** min(attempt, 6)))
        # Still contended after all attempts: refuse for now rather than over-grant.
        return TokenGrant(granted=0, retry_after=min(1.0, 1.0 / rate))
