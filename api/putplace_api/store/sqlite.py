"""Embedded SQLite metadata store: the zero-setup default.

All SQL runs on one dedicated thread with the standard library's sqlite3: a whole batch
upsert is one hop off the event loop, and statements of two requests can never interleave
inside one transaction. Several API processes may share the file (WAL, busy timeout);
writes take the database lock with BEGIN IMMEDIATE.
"""

from __future__ import annotations

import asyncio
import functools
import json
import operator
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

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
    glob_to_sqlite,
    new_id,
    prefix_ranges,
)
from putplace_api.store.migrations import sqlite as schema
from putplace_client.models import FileMetadata

__all__ = ["SqliteStore"]

T = TypeVar("T")

# The current schema (version migrations.sqlite.VERSION): a new database gets it as it is; an
# older one is brought to it by migrations.sqlite.upgrade first.
_FILE_COLUMNS = """
    hostname TEXT NOT NULL, filepath TEXT NOT NULL, filepath_escaped INTEGER NOT NULL DEFAULT 0,
    ip_address TEXT NOT NULL, sha256 TEXT NOT NULL,
    file_size INTEGER NOT NULL, file_mode INTEGER NOT NULL, file_uid INTEGER NOT NULL,
    file_gid INTEGER NOT NULL, file_mtime REAL NOT NULL, file_atime REAL NOT NULL,
    file_ctime REAL NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL
"""

# Tables keyed by text are WITHOUT ROWID: one B-tree each instead of a rowid table plus a
# separate index on the key -- fewer random inserts per catalogued file.
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, {_FILE_COLUMNS}, UNIQUE (hostname, filepath, filepath_escaped)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_sha256 ON files (sha256);
CREATE INDEX IF NOT EXISTS files_updated_at ON files (updated_at);
CREATE TABLE IF NOT EXISTS file_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, {_FILE_COLUMNS},
    superseded_at REAL NOT NULL, event TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS file_history_path ON file_history (hostname, filepath, filepath_escaped, superseded_at);
CREATE INDEX IF NOT EXISTS file_history_sha256 ON file_history (sha256);
CREATE TABLE IF NOT EXISTS contents (
    sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, stored INTEGER NOT NULL DEFAULT 0,
    first_seen_at REAL NOT NULL, stored_at REAL, mime_type TEXT, storage_path TEXT, stored_by TEXT,
    pack_id TEXT, pack_offset INTEGER) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS contents_stored_by ON contents (stored_by) WHERE stored_by IS NOT NULL;
CREATE INDEX IF NOT EXISTS contents_pack ON contents (pack_id, pack_offset) WHERE pack_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT, key_hash TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL, scopes TEXT NOT NULL, rate_limit REAL, rate_limit_burst INTEGER,
    created_at REAL NOT NULL, expires_at REAL, is_active INTEGER NOT NULL, revoked_at REAL,
    last_used_at REAL, hostnames TEXT, path_prefixes TEXT, max_bytes INTEGER, max_files INTEGER);
CREATE TABLE IF NOT EXISTS markers (name TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rate_buckets (bucket TEXT PRIMARY KEY, tat REAL NOT NULL);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until REAL NOT NULL) WITHOUT ROWID;
"""

_INSERT_FILE = (
    f"INSERT INTO files (id, {', '.join(FILE_FIELDS)}, created_at, updated_at) "
    f"VALUES (?, {', '.join('?' for _ in FILE_FIELDS)}, ?, ?)"
)
_UPDATE_FILE = f"UPDATE files SET {', '.join(f'{f} = ?' for f in FILE_FIELDS)}, updated_at = ? WHERE id = ?"
# The first upload wins stored_at and stored_by; a concurrent identical upload changes neither.
# Where the bytes are (object or pack) is the last upload's: each points at bytes it wrote.
_MARK_STORED = (
    "INSERT INTO contents (sha256, size, stored, first_seen_at, stored_at, mime_type, storage_path, stored_by, "
    "pack_id, pack_offset) "
    "VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sha256) DO UPDATE SET "
    "size = excluded.size, stored = 1, stored_at = COALESCE(stored_at, excluded.stored_at), "
    "mime_type = excluded.mime_type, storage_path = excluded.storage_path, "
    "stored_by = CASE WHEN stored = 1 THEN stored_by ELSE excluded.stored_by END, "
    "pack_id = excluded.pack_id, pack_offset = excluded.pack_offset"
)
_INSERT_HISTORY = (
    f"INSERT INTO file_history (id, {', '.join(FILE_FIELDS)}, created_at, updated_at, superseded_at, event) "
    f"VALUES (?, {', '.join('?' for _ in FILE_FIELDS)}, ?, ?, ?, ?)"
)


def _set_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """``PRAGMA journal_mode=WAL``, tried again while the file is locked, up to ``timeout``.

    Two processes opening a file still in rollback mode (a new replica beside another, an old
    database) both read it and then ask to lock it for the switch: SQLite refuses one of them at
    once with "database is locked", without waiting (its deadlock rule), so the busy timeout does
    not help. The refused one has let go of its lock; once the other has switched, it can."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


_file_values: Callable[[FileMetadata], tuple[Any, ...]] = operator.attrgetter(*FILE_FIELDS)
_HOST, _PATH, _ESCAPED = (FILE_FIELDS.index(f) for f in ("hostname", "filepath", "filepath_escaped"))
NameKey = tuple[str, str, bool]  # (hostname, filepath, filepath_escaped)


def _name_key(meta: FileMetadata) -> NameKey:
    return (meta.hostname, meta.filepath, meta.filepath_escaped)


@dataclass(slots=True)
class _Stored:
    """A files row as stored: id, the client fields in FILE_FIELDS order, epoch times."""

    id: str
    values: tuple[Any, ...]
    created_at: float
    updated_at: float


def _history_values(old: FileRow, ts: float, event: str) -> tuple[Any, ...]:
    return (old.id, *_file_values(old.meta), _ts(old.created_at), _ts(old.updated_at), ts, event)


def _file_row(row: sqlite3.Row) -> FileRow:
    # Rows were validated on the way in: constructing skips validating them again.
    meta = FileMetadata.model_construct(**{f: row[f] for f in FILE_FIELDS})
    meta.filepath_escaped = bool(meta.filepath_escaped)  # an INTEGER column
    return FileRow(id=row["id"], meta=meta, created_at=_dt(row["created_at"]), updated_at=_dt(row["updated_at"]))  # type: ignore[arg-type]


def _content_row(row: sqlite3.Row) -> ContentRow:
    return ContentRow(
        sha256=row["sha256"],
        size=row["size"],
        stored=bool(row["stored"]),
        first_seen_at=_dt(row["first_seen_at"]),  # type: ignore[arg-type]
        stored_at=_dt(row["stored_at"]),
        mime_type=row["mime_type"],
        storage_path=row["storage_path"],
        stored_by=row["stored_by"],
        pack_id=row["pack_id"],
        pack_offset=row["pack_offset"],
    )


def _content_values(row: ContentRow) -> tuple[Any, ...]:
    return (
        row.sha256,
        row.size,
        int(row.stored),
        _ts(row.first_seen_at),
        _ts(row.stored_at),
        row.mime_type,
        row.storage_path,
        row.stored_by,
        row.pack_id,
        row.pack_offset,
    )


def _names(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(json.loads(value))


def _visible_where(v: Visibility | None) -> tuple[list[str], list[Any]]:
    """SQL conditions (and their parameters) for the records inside ``v``."""
    if v is None:
        return [], []
    where: list[str] = []
    params: list[Any] = []
    if v.hostnames is not None:
        where.append(f"hostname IN ({','.join('?' for _ in v.hostnames)})")
        params += v.hostnames
    if v.path_prefixes is not None:
        where.append(
            "(" + " OR ".join("filepath = ? OR (filepath >= ? AND filepath < ?)" for _ in v.path_prefixes) + ")"
        )
        for p in v.path_prefixes:
            params += [p, directory(p), directory(p) + PATH_END]
    return where, params


def _key_row(row: sqlite3.Row) -> KeyRow:
    return KeyRow(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        key_hash=row["key_hash"],
        key_prefix=row["key_prefix"],
        scopes=tuple(s for s in row["scopes"].split(",") if s),
        rate_limit=row["rate_limit"],
        rate_limit_burst=row["rate_limit_burst"],
        created_at=_dt(row["created_at"]),  # type: ignore[arg-type]
        expires_at=_dt(row["expires_at"]),
        is_active=bool(row["is_active"]),
        revoked_at=_dt(row["revoked_at"]),
        last_used_at=_dt(row["last_used_at"]),
        hostnames=_names(row["hostnames"]),
        path_prefixes=_names(row["path_prefixes"]),
        max_bytes=row["max_bytes"],
        max_files=row["max_files"],
    )


@dataclass(slots=True)
class _PutCall:
    files: Sequence[FileMetadata]
    now: datetime
    result: asyncio.Future[list[PutResult]]


def _settle(call: _PutCall, outcome: list[PutResult] | BaseException) -> None:
    if call.result.done():  # its request was cancelled (client gone)
        return
    if isinstance(outcome, BaseException):
        call.result.set_exception(outcome)
    else:
        call.result.set_result(outcome)


class SqliteStore:
    kind = "sqlite"

    def __init__(self, path: str | Path, timeout: float = 5.0) -> None:
        self._path = str(path)
        self._timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="putplace-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._put_queue: list[_PutCall] = []
        self._put_drainer: asyncio.Task[None] | None = None

    # -- plumbing ------------------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except sqlite3.OperationalError as exc:  # locked, disk I/O error, unable to open ...
            raise BackendUnavailable("database", str(exc)) from exc

    @property
    def _c(self) -> sqlite3.Connection:
        assert self._conn is not None, "store is not open"
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        c = self._c
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    async def _write_one(self, sql: str, args: Sequence[Any]) -> int:
        """One statement in its own write transaction; the rows it changed."""

        def run() -> int:
            with self._write() as c:
                return c.execute(sql, args).rowcount

        return await self._run(run)

    def _open(self) -> None:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None)
        conn.row_factory = sqlite3.Row
        _set_wal(conn, self._timeout)
        conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL keeps it consistent
        # Catalogue inserts touch several indexes with random keys (paths, sha256s): a page
        # cache of 64 MiB instead of the default 2 MiB keeps them off the disk.
        conn.execute("PRAGMA cache_size=-65536")
        # Checkpoints (write-back of WAL pages, with an fsync) were half the cost of a
        # catalogue write; a ten times larger window (WAL up to ~40 MiB) writes a page
        # changed many times once.
        conn.execute("PRAGMA wal_autocheckpoint=10000")
        # One transaction: processes opening one file at once migrate it once, and a failed
        # migration changes nothing.
        conn.execute("BEGIN IMMEDIATE")
        try:
            schema.upgrade(conn)
            for statement in (_SCHEMA + _WEBHOOK_SCHEMA + _SESSION_SCHEMA).split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {schema.VERSION}")
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
        conn.execute("COMMIT")
        self._conn = conn

    async def open(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._c.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def ping(self) -> None:
        await self._run(lambda: self._c.execute("SELECT 1").fetchone())

    # -- files ---------------------------------------------------------------------------
    def _put_files_in(
        self, c: sqlite3.Connection, files: Sequence[FileMetadata], times: Sequence[float]
    ) -> list[PutResult]:
        """One batch (each file with the time of the call that announced it), in statements per
        chunk rather than per file: the existing records are read with one query per host and
        chunk; inserts, updates and history go in with executemany. Existing rows stay plain
        tuples (no model per row): an unchanged record is answered with the incoming metadata,
        which equals it. A path repeated within the batch is resolved in memory, in order."""
        stamps: dict[float, datetime] = {}

        def stamp(ts: float) -> datetime:
            """A time as read back; made once per call's time, not once per row."""
            made = stamps.get(ts)
            if made is None:
                made = stamps[ts] = datetime.fromtimestamp(ts, UTC)
            return made

        contents = self._new_contents(c, files, times, stamp)
        current = self._existing(c, {_name_key(f) for f in files})
        inserts: dict[NameKey, _Stored] = {}
        updates: dict[NameKey, _Stored] = {}
        archived: list[tuple[Any, ...]] = []
        rows: list[FileRow] = []
        for meta, ts in zip(files, times, strict=True):
            key = _name_key(meta)
            values = _file_values(meta)
            old = current.get(key)
            if old is None:
                new = _Stored(new_id(), values, ts, ts)
                inserts[key] = new
            elif old.values == values:
                new = old
            else:
                archived.append((old.id, *old.values, old.created_at, old.updated_at, ts, "replaced"))
                new = _Stored(old.id, values, old.created_at, ts)
                (inserts if key in inserts else updates)[key] = new
            current[key] = new
            created, updated = stamp(new.created_at), stamp(new.updated_at)
            rows.append(FileRow(id=new.id, meta=meta, created_at=created, updated_at=updated))
        c.executemany(_INSERT_FILE, [(r.id, *r.values, r.created_at, r.updated_at) for r in inserts.values()])
        c.executemany(_UPDATE_FILE, [(*r.values, r.updated_at, r.id) for r in updates.values()])
        c.executemany(_INSERT_HISTORY, archived)
        return [PutResult(file=r, content=contents[r.meta.sha256]) for r in rows]

    @classmethod
    def _new_contents(
        cls,
        c: sqlite3.Connection,
        files: Sequence[FileMetadata],
        times: Sequence[float],
        stamp: Callable[[float], datetime],
    ) -> dict[str, ContentRow]:
        """The content row of every sha256 in ``files``: those already known as read, the others
        inserted (first size and time win) and answered as written, without reading them back.
        Inside the batch's write transaction, so no other writer comes in between."""
        first: dict[str, tuple[int, float]] = {}
        for f, ts in zip(files, times, strict=True):
            first.setdefault(f.sha256, (f.file_size, ts))
        contents = cls._contents(c, set(first))
        new = [(sha, size, ts) for sha, (size, ts) in first.items() if sha not in contents]
        c.executemany("INSERT INTO contents (sha256, size, stored, first_seen_at) VALUES (?, ?, 0, ?)", new)
        contents.update((sha, ContentRow(sha, size, stored=False, first_seen_at=stamp(ts))) for sha, size, ts in new)
        return contents

    @staticmethod
    def _existing(c: sqlite3.Connection, keys: set[NameKey]) -> dict[NameKey, _Stored]:
        by_host: dict[str, list[str]] = {}
        for host, path, _ in keys:
            by_host.setdefault(host, []).append(path)
        found: dict[NameKey, _Stored] = {}
        columns = ", ".join(FILE_FIELDS)
        for host, paths in by_host.items():
            for i in range(0, len(paths), 500):  # stay under SQLite's bound-parameter limit
                chunk = paths[i : i + 500]
                marks = ",".join("?" for _ in chunk)
                sql = (
                    f"SELECT id, created_at, updated_at, {columns} FROM files "
                    f"WHERE hostname = ? AND filepath IN ({marks})"
                )
                for row in c.execute(sql, (host, *chunk)):
                    values = tuple(row[3:])
                    key = (values[_HOST], values[_PATH], bool(values[_ESCAPED]))
                    if key in keys:  # not the other name of the same text (escaped or not)
                        found[key] = _Stored(row[0], values, row[1], row[2])
        return found

    def _put_groups(self, calls: Sequence[_PutCall]) -> list[list[PutResult]]:
        """The group's calls as one batch, in arrival order: a handful of statements for the
        whole group instead of for each call (a group of single put_files cost ~40 µs of this
        thread per file). The same as the calls one after the other: a path announced twice
        is resolved in memory, in order, each file keeping its own call's time."""
        files = [f for call in calls for f in call.files]
        times = [call.now.timestamp() for call in calls for _ in call.files]
        with self._write() as c:
            results = self._put_files_in(c, files, times)
        answers, start = [], 0
        for call in calls:
            answers.append(results[start : start + len(call.files)])
            start += len(call.files)
        return answers

    @staticmethod
    def _archive(c: sqlite3.Connection, old: FileRow, ts: float, event: str) -> None:
        c.execute(_INSERT_HISTORY, _history_values(old, ts, event))

    @staticmethod
    def _contents(c: sqlite3.Connection, shas: set[str]) -> dict[str, ContentRow]:
        out: dict[str, ContentRow] = {}
        ordered = sorted(shas)
        for i in range(0, len(ordered), 500):  # stay under SQLite's bound-parameter limit
            chunk = ordered[i : i + 500]
            marks = ",".join("?" for _ in chunk)
            for row in c.execute(f"SELECT * FROM contents WHERE sha256 IN ({marks})", chunk):
                out[row["sha256"]] = _content_row(row)
        return out

    async def put_files(self, files: Sequence[FileMetadata], now: datetime) -> list[PutResult]:
        """Group commit: calls that arrive while a transaction runs are written together in
        the next one -- one thread hop and one commit for many concurrent requests."""
        call = _PutCall(files, now, asyncio.get_running_loop().create_future())
        self._put_queue.append(call)
        if self._put_drainer is None or self._put_drainer.done():
            self._put_drainer = asyncio.create_task(self._drain_puts())
        return await call.result

    async def _drain_puts(self) -> None:
        while self._put_queue:
            group, self._put_queue = self._put_queue, []
            try:
                results = await self._run(self._put_groups, group)
            except Exception as exc:
                if len(group) > 1 and not isinstance(exc, BackendUnavailable):
                    # One call's failure must not fail its neighbours: retry each alone.
                    for call in group:
                        try:
                            _settle(call, (await self._run(self._put_groups, [call]))[0])
                        except Exception as own:
                            _settle(call, own)
                else:
                    for call in group:
                        _settle(call, exc)
                continue
            for call, result in zip(group, results, strict=True):
                _settle(call, result)

    def _delete_file(self, hostname: str, filepath: str, escaped: bool, now: datetime) -> bool:
        with self._write() as c:
            found = c.execute(
                "SELECT * FROM files WHERE hostname = ? AND filepath = ? AND filepath_escaped = ?",
                (hostname, filepath, escaped),
            ).fetchone()
            if found is None:
                return False
            self._archive(c, _file_row(found), now.timestamp(), "deleted")
            c.execute("DELETE FROM files WHERE id = ?", (found["id"],))
            return True

    async def delete_file(self, hostname: str, filepath: str, now: datetime, *, escaped: bool = False) -> bool:
        return await self._run(self._delete_file, hostname, filepath, escaped, now)

    async def file_by_sha(self, sha256: str) -> FileRow | None:
        def run() -> FileRow | None:
            row = self._c.execute("SELECT * FROM files WHERE sha256 = ? ORDER BY id LIMIT 1", (sha256,)).fetchone()
            return None if row is None else _file_row(row)

        return await self._run(run)

    async def list_files(self, query: FileQuery) -> list[FileRow]:
        where: list[str] = []
        params: list[Any] = []
        if query.hostname is not None:
            where.append("hostname = ?")
            params.append(query.hostname)
        if query.path_prefix:
            # Ranges, not LIKE: no wildcard escaping, and they use the (hostname, filepath) index.
            clauses = []
            for prefix, escaped in prefix_ranges(query.path_prefix, query.path_prefix_escaped):
                clause = "filepath >= ? AND filepath < ?"
                params += [prefix, prefix + "\U0010ffff"]
                if escaped is not None:
                    clause += " AND filepath_escaped = ?"
                    params.append(escaped)
                clauses.append(f"({clause})")
            where.append(f"({' OR '.join(clauses)})")
        if query.sha256 is not None:
            where.append("sha256 = ?")
            params.append(query.sha256)
        if query.changed_since is not None:
            where.append("updated_at >= ?")
            params.append(query.changed_since.timestamp())
        if query.after_id is not None:
            where.append("id > ?")
            params.append(query.after_id)
        visible, visible_params = _visible_where(query.visible)
        where += visible
        params += visible_params
        sql = "SELECT * FROM files"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id LIMIT ?"
        params.append(query.limit)
        return await self._run(lambda: [_file_row(r) for r in self._c.execute(sql, params)])

    async def visible_shas(self, shas: Collection[str], visible: Visibility) -> set[str]:
        where, params = _visible_where(visible)

        def run() -> set[str]:
            found: set[str] = set()
            ordered = sorted(set(shas))
            for i in range(0, len(ordered), 400):  # with the visibility's, under the parameter limit
                chunk = ordered[i : i + 400]
                sql = f"SELECT DISTINCT sha256 FROM files WHERE sha256 IN ({','.join('?' for _ in chunk)})"
                found.update(r[0] for r in self._c.execute(" AND ".join([sql, *where]), (*chunk, *params)))
            return found

        return await self._run(run)

    async def history(
        self, hostname: str, filepath: str, limit: int, before: datetime | None, *, escaped: bool = False
    ) -> list[HistoryRow]:
        sql = "SELECT * FROM file_history WHERE hostname = ? AND filepath = ? AND filepath_escaped = ?"
        params: list[Any] = [hostname, filepath, escaped]
        if before is not None:
            sql += " AND superseded_at < ?"
            params.append(before.timestamp())
        sql += " ORDER BY superseded_at DESC, seq DESC LIMIT ?"
        params.append(limit)

        def run() -> list[HistoryRow]:
            return [
                HistoryRow(file=_file_row(r), superseded_at=_dt(r["superseded_at"]), event=r["event"])  # type: ignore[arg-type]
                for r in self._c.execute(sql, params)
            ]

        return await self._run(run)

    # -- content -------------------------------------------------------------------------
    async def get_content(self, sha256: str) -> ContentRow | None:
        def run() -> ContentRow | None:
            row = self._c.execute("SELECT * FROM contents WHERE sha256 = ?", (sha256,)).fetchone()
            return None if row is None else _content_row(row)

        return await self._run(run)

    async def contents(self, shas: Collection[str]) -> dict[str, ContentRow]:
        return await self._run(self._contents, self._c, set(shas))

    async def mark_stored(
        self,
        sha256: str,
        size: int,
        mime_type: str | None,
        storage_path: str,
        now: datetime,
        stored_by: str | None = None,
    ) -> ContentRow:
        def run() -> ContentRow:
            with self._write() as c:
                c.execute(
                    _MARK_STORED,
                    (sha256, size, now.timestamp(), now.timestamp(), mime_type, storage_path, stored_by, None, None),
                )
                return self._contents(c, {sha256})[sha256]

        return await self._run(run)

    async def mark_stored_many(self, items: Sequence[StoredContent], now: datetime) -> None:
        def run() -> None:
            ts = now.timestamp()
            with self._write() as c:
                c.executemany(
                    _MARK_STORED,
                    [
                        (i.sha256, i.size, ts, ts, i.mime_type, i.storage_path, i.stored_by, i.pack_id, i.pack_offset)
                        for i in items
                    ],
                )

        await self._run(run)

    async def stats(self, visible: Visibility | None = None) -> StatsRow:
        where, params = _visible_where(visible)
        files_where = " WHERE " + " AND ".join(where) if where else ""
        # Restricted: the stored contents that a visible record names.
        contents_where = f" AND sha256 IN (SELECT sha256 FROM files{files_where})" if where else ""

        def run() -> StatsRow:
            c = self._c
            files, hosts, logical = c.execute(
                f"SELECT COUNT(*), COUNT(DISTINCT hostname), COALESCE(SUM(file_size), 0) FROM files{files_where}",
                params,
            ).fetchone()
            stored, stored_bytes = c.execute(
                f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM contents WHERE stored = 1{contents_where}", params
            ).fetchone()
            return StatsRow(files, hosts, stored, stored_bytes, logical)

        return await self._run(run)

    async def key_usage(self, key_ids: Collection[str]) -> dict[str, KeyUsage]:
        totals = await self._run(self._stored_totals, "stored_by", key_ids)
        return {k: KeyUsage(n, size) for k, (n, size) in totals.items()}

    def _stored_totals(self, column: str, values: Collection[str]) -> dict[str, tuple[int, int]]:
        """The stored contents and their bytes per value of ``column`` (stored_by, pack_id)."""
        out: dict[str, tuple[int, int]] = {}
        ordered = sorted(set(values))
        for i in range(0, len(ordered), 500):
            chunk = ordered[i : i + 500]
            sql = (
                f"SELECT {column}, COUNT(*), COALESCE(SUM(size), 0) FROM contents "
                f"WHERE {column} IN ({','.join('?' for _ in chunk)}) AND stored = 1 GROUP BY {column}"
            )
            out.update((r[0], (r[1], r[2])) for r in self._c.execute(sql, chunk))
        return out

    # -- integrity -----------------------------------------------------------------------
    async def iter_contents(self, batch: int = 1000) -> AsyncIterator[list[ContentRow]]:
        after = ""
        while True:
            rows = await self._run(
                lambda a: [
                    _content_row(r)
                    for r in self._c.execute(
                        "SELECT * FROM contents WHERE sha256 > ? ORDER BY sha256 LIMIT ?", (a, batch)
                    )
                ],
                after,
            )
            if not rows:
                return
            yield rows
            after = rows[-1].sha256

    async def iter_referenced(self, batch: int = 1000) -> AsyncIterator[list[str]]:
        # A compound select ordered like both sha256 indexes: SQLite merges the two index
        # scans and stops at the limit instead of collecting every row.
        sql = (
            "SELECT sha256 FROM files WHERE sha256 > ? UNION "
            "SELECT sha256 FROM file_history WHERE sha256 > ? ORDER BY 1 LIMIT ?"
        )
        after = ""
        while True:
            shas = await self._run(lambda a: [r[0] for r in self._c.execute(sql, (a, a, batch))], after)
            if not shas:
                return
            yield shas
            after = shas[-1]

    async def referenced(self, shas: Collection[str]) -> set[str]:
        def run() -> set[str]:
            found: set[str] = set()
            ordered = sorted(set(shas))
            for i in range(0, len(ordered), 400):  # two lists of bound parameters per chunk
                chunk = ordered[i : i + 400]
                marks = ",".join("?" for _ in chunk)
                sql = (
                    f"SELECT sha256 FROM files WHERE sha256 IN ({marks}) UNION "
                    f"SELECT sha256 FROM file_history WHERE sha256 IN ({marks})"
                )
                found.update(r[0] for r in self._c.execute(sql, (*chunk, *chunk)))
            return found

        return await self._run(run)

    async def delete_contents_if_unchanged(self, rows: Sequence[ContentRow]) -> set[str]:
        def run() -> set[str]:
            with self._write() as c:
                for r in rows:
                    c.execute(
                        "DELETE FROM contents WHERE sha256 = ? AND stored = ? AND size = ? AND stored_at IS ?",
                        (r.sha256, int(r.stored), r.size, _ts(r.stored_at)),
                    )
                left = self._contents(c, {r.sha256 for r in rows})
            return {r.sha256 for r in rows} - set(left)

        return await self._run(run)

    async def restore_contents(self, rows: Sequence[ContentRow]) -> None:
        def run() -> None:
            with self._write() as c:
                c.executemany(
                    "INSERT OR IGNORE INTO contents "
                    "(sha256, size, stored, first_seen_at, stored_at, mime_type, storage_path, stored_by, "
                    "pack_id, pack_offset) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [_content_values(r) for r in rows],
                )

        await self._run(run)

    # -- packs -----------------------------------------------------------------------------
    async def pack_usage(self, pack_ids: Collection[str]) -> dict[str, PackUsage]:
        totals = await self._run(self._stored_totals, "pack_id", pack_ids)
        return {p: PackUsage(n, size) for p, (n, size) in totals.items()}

    async def packed_contents(self, pack_id: str) -> list[ContentRow]:
        def run() -> list[ContentRow]:
            sql = "SELECT * FROM contents WHERE pack_id = ? AND stored = 1 ORDER BY pack_offset"
            return [_content_row(r) for r in self._c.execute(sql, (pack_id,))]

        return await self._run(run)

    async def move_packed(self, moves: Sequence[PackMove]) -> set[str]:
        def run() -> set[str]:
            moved: set[str] = set()
            with self._write() as c:
                for m in moves:
                    done = c.execute(
                        "UPDATE contents SET pack_id = ?, pack_offset = ?, storage_path = ? "
                        "WHERE sha256 = ? AND pack_id = ? AND pack_offset = ? AND stored = 1",
                        (m.to_pack, m.to_offset, m.storage_path, m.sha256, m.from_pack, m.from_offset),
                    )
                    if done.rowcount:
                        moved.add(m.sha256)
            return moved

        return await self._run(run)

    # -- keys ----------------------------------------------------------------------------
    async def insert_key(self, key: KeyRow) -> None:
        def run() -> None:
            with self._write() as c:
                c.execute(
                    "INSERT INTO api_keys (id, name, description, key_hash, key_prefix, scopes, rate_limit, "
                    "rate_limit_burst, created_at, expires_at, is_active, revoked_at, last_used_at, "
                    "hostnames, path_prefixes, max_bytes, max_files) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        key.id,
                        key.name,
                        key.description,
                        key.key_hash,
                        key.key_prefix,
                        ",".join(key.scopes),
                        key.rate_limit,
                        key.rate_limit_burst,
                        _ts(key.created_at),
                        _ts(key.expires_at),
                        int(key.is_active),
                        _ts(key.revoked_at),
                        _ts(key.last_used_at),
                        None if key.hostnames is None else json.dumps(key.hostnames),
                        None if key.path_prefixes is None else json.dumps(key.path_prefixes),
                        key.max_bytes,
                        key.max_files,
                    ),
                )

        await self._run(run)

    def _one_key(self, sql: str, arg: str) -> KeyRow | None:
        row = self._c.execute(sql, (arg,)).fetchone()
        return None if row is None else _key_row(row)

    async def key_by_hash(self, key_hash: str) -> KeyRow | None:
        return await self._run(self._one_key, "SELECT * FROM api_keys WHERE key_hash = ?", key_hash)

    async def get_key(self, key_id: str) -> KeyRow | None:
        return await self._run(self._one_key, "SELECT * FROM api_keys WHERE id = ?", key_id)

    async def list_keys(self) -> list[KeyRow]:
        return await self._run(lambda: [_key_row(r) for r in self._c.execute("SELECT * FROM api_keys ORDER BY id")])

    async def revoke_key(self, key_id: str, now: datetime) -> bool:
        changed = await self._write_one(
            "UPDATE api_keys SET is_active = 0, revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
            (now.timestamp(), key_id),
        )
        return changed > 0

    async def delete_key(self, key_id: str) -> bool:
        return await self._write_one("DELETE FROM api_keys WHERE id = ?", (key_id,)) > 0

    async def touch_keys(self, last_used: Mapping[str, datetime]) -> None:
        def run() -> None:
            with self._write() as c:
                c.executemany(
                    "UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?",
                    [(when.timestamp(), key_id) for key_id, when in last_used.items()],
                )

        if last_used:
            await self._run(run)

    async def claim(self, marker: str, now: datetime) -> bool:
        def run() -> bool:
            with self._write() as c:
                cur = c.execute(
                    "INSERT OR IGNORE INTO markers (name, created_at) VALUES (?, ?)", (marker, now.timestamp())
                )
                return cur.rowcount > 0

        return await self._run(run)

    # -- rate limits ---------------------------------------------------------------------
    async def take_tokens(self, bucket: str, rate: float, burst: int, want: int, now: float) -> TokenGrant:
        def run() -> TokenGrant:
            with self._write() as c:
                row = c.execute("SELECT tat FROM rate_buckets WHERE bucket = ?", (bucket,)).fetchone()
                granted, tat, retry_after = gcra(row["tat"] if row else 0.0, now, rate, burst, want)
                if granted:
                    c.execute(
                        "INSERT INTO rate_buckets (bucket, tat) VALUES (?, ?) "
                        "ON CONFLICT (bucket) DO UPDATE SET tat = excluded.tat",
                        (bucket, tat),
                    )
                return TokenGrant(granted=granted, retry_after=retry_after)

        return await self._run(run)

    # -- leases --------------------------------------------------------------------------
    async def take_lease(self, name: str, holder: str, now: datetime, until: datetime) -> bool:
        changed = await self._write_one(
            "INSERT INTO leases (name, holder, until) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until "
            "WHERE leases.until < ? OR leases.holder = excluded.holder",
            (name, holder, until.timestamp(), now.timestamp()),
        )
        return changed > 0

    async def release_lease(self, name: str, holder: str) -> None:
        await self._write_one("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    # -- webhooks (putplace_api.webhooks) -------------------------------------------------
    async def insert_subscription(self, row: SubscriptionRow) -> None:
        await self._write_one(
            "INSERT INTO webhook_subscriptions (id, url, events, secret, description, created_at, active) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                row.id,
                row.url,
                ",".join(row.events),
                row.secret,
                row.description,
                row.created_at.timestamp(),
                int(row.active),
            ),
        )

    async def list_subscriptions(self) -> list[SubscriptionRow]:
        return await self._run(
            lambda: [_subscription_row(r) for r in self._c.execute("SELECT * FROM webhook_subscriptions ORDER BY id")]
        )

    async def delete_subscription(self, subscription_id: str) -> bool:
        def run() -> bool:
            with self._write() as c:
                c.execute("DELETE FROM webhook_deliveries WHERE subscription_id = ?", (subscription_id,))
                c.execute("DELETE FROM leases WHERE name = ?", (delivery_lease(subscription_id),))
                return c.execute("DELETE FROM webhook_subscriptions WHERE id = ?", (subscription_id,)).rowcount > 0

        return await self._run(run)

    async def enqueue_deliveries(self, rows: Sequence[DeliveryRow]) -> None:
        def run() -> None:
            with self._write() as c:
                c.executemany(
                    "INSERT INTO webhook_deliveries (id, subscription_id, event, body, created_at, next_attempt_at, "
                    "attempts, status, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            r.id,
                            r.subscription_id,
                            r.event,
                            r.body,
                            r.created_at.timestamp(),
                            r.next_attempt_at.timestamp(),
                            r.attempts,
                            r.status,
                            r.last_error,
                        )
                        for r in rows
                    ],
                )

        if rows:
            await self._run(run)

    async def delivery_head(self, subscription_id: str) -> DeliveryRow | None:
        def run() -> DeliveryRow | None:
            row = self._c.execute(
                "SELECT * FROM webhook_deliveries WHERE subscription_id = ? AND status = ? ORDER BY id LIMIT 1",
                (subscription_id, DELIVERY_PENDING),
            ).fetchone()
            return None if row is None else _delivery_row(row)

        return await self._run(run)

    async def delivery_done(self, delivery_id: str) -> None:
        await self._write_one("DELETE FROM webhook_deliveries WHERE id = ?", (delivery_id,))

    async def delivery_failed(
        self, delivery_id: str, attempts: int, next_attempt_at: datetime, error: str, dead: bool
    ) -> None:
        status = DELIVERY_DEAD if dead else DELIVERY_PENDING
        await self._write_one(
            "UPDATE webhook_deliveries SET attempts = ?, next_attempt_at = ?, last_error = ?, status = ? WHERE id = ?",
            (attempts, next_attempt_at.timestamp(), error, status, delivery_id),
        )

    async def dead_deliveries(self, after_id: str | None, limit: int) -> list[DeliveryRow]:
        return await self._run(
            lambda: [
                _delivery_row(r)
                for r in self._c.execute(
                    "SELECT * FROM webhook_deliveries WHERE status = ? AND id > ? ORDER BY id LIMIT ?",
                    (DELIVERY_DEAD, after_id or "", limit),
                )
            ]
        )

    async def replay_deliveries(self, delivery_ids: Collection[str] | None, now: datetime) -> int:
        sql = "UPDATE webhook_deliveries SET status = ?, attempts = 0, next_attempt_at = ? WHERE status = ?"

        def run() -> int:
            with self._write() as c:
                args = (DELIVERY_PENDING, now.timestamp(), DELIVERY_DEAD)
                if delivery_ids is None:
                    return c.execute(sql, args).rowcount
                return sum(c.execute(sql + " AND id = ?", (*args, i)).rowcount for i in delivery_ids)

        return await self._run(run)

    async def delivery_counts(self) -> dict[str, int]:
        def run() -> dict[str, int]:
            counts = {DELIVERY_PENDING: 0, DELIVERY_DEAD: 0}
            for status, n in self._c.execute("SELECT status, COUNT(*) FROM webhook_deliveries GROUP BY status"):
                counts[status] = n
            return counts

        return await self._run(run)

    async def purge_deliveries(self, keep: Collection[str], before: datetime) -> int:
        def run() -> int:
            with self._write() as c:
                gone = [
                    r[0]
                    for r in c.execute("SELECT DISTINCT subscription_id FROM webhook_deliveries")
                    if r[0] not in set(keep)
                ]
                return sum(
                    c.execute(
                        "DELETE FROM webhook_deliveries WHERE subscription_id = ? AND created_at < ?",
                        (sub, before.timestamp()),
                    ).rowcount
                    for sub in gone
                )

        return await self._run(run)

    # -- upload sessions (putplace_api.sessions) --------------------------------------------
    async def insert_session(self, row: SessionRow) -> None:
        values = {f.name: getattr(row, f.name) for f in fields(SessionRow)}
        values |= {"created_at": row.created_at.timestamp(), "expires_at": row.expires_at.timestamp()}
        columns = ", ".join(values)
        await self._write_one(
            f"INSERT INTO upload_sessions ({columns}) VALUES ({', '.join('?' for _ in values)})", list(values.values())
        )

    async def get_session(self, session_id: str) -> SessionRow | None:
        def run() -> SessionRow | None:
            row = self._c.execute("SELECT * FROM upload_sessions WHERE id = ?", (session_id,)).fetchone()
            return None if row is None else _session_row(row)

        return await self._run(run)

    async def touch_session(self, session_id: str, expires_at: datetime) -> None:
        await self._write_one(
            "UPDATE upload_sessions SET expires_at = MAX(expires_at, ?) WHERE id = ?",
            (expires_at.timestamp(), session_id),
        )

    async def delete_session(self, session_id: str) -> bool:
        return await self._write_one("DELETE FROM upload_sessions WHERE id = ?", (session_id,)) > 0

    async def expired_sessions(self, now: datetime, limit: int) -> list[SessionRow]:
        sql = "SELECT * FROM upload_sessions WHERE expires_at < ? ORDER BY expires_at LIMIT ?"
        return await self._run(lambda: [_session_row(r) for r in self._c.execute(sql, (now.timestamp(), limit))])

    # -- console queries (store.base.ConsoleStore) -----------------------------------------
    async def list_nodes(self, after: str | None, limit: int) -> list[str]:
        def run() -> list[str]:
            # A skip scan: one seek per host on the (hostname, filepath) index, never a GROUP BY
            # (or a count: 135 ms for 20 nodes of 50,000 records, bench/console_pages.py).
            nodes: list[str] = []
            last = after
            while len(nodes) < limit:
                if last is None:
                    row = self._c.execute("SELECT MIN(hostname) FROM files").fetchone()
                else:
                    row = self._c.execute("SELECT MIN(hostname) FROM files WHERE hostname > ?", (last,)).fetchone()
                if row[0] is None:
                    break
                last = row[0]
                nodes.append(last)
            return nodes

        return await self._run(run)

    async def paths_after(self, hostname: str, lower: str, upper: str, limit: int) -> list[FileRow]:
        sql = "SELECT * FROM files WHERE hostname = ? AND filepath > ? AND filepath < ? ORDER BY filepath LIMIT ?"
        return await self._run(lambda: [_file_row(r) for r in self._c.execute(sql, (hostname, lower, upper, limit))])

    async def current_file(self, hostname: str, filepath: str, escaped: bool = False) -> FileRow | None:
        def run() -> FileRow | None:
            row = self._c.execute(
                "SELECT * FROM files WHERE hostname = ? AND filepath = ? AND filepath_escaped = ?",
                (hostname, filepath, escaped),
            ).fetchone()
            return None if row is None else _file_row(row)

        return await self._run(run)

    async def search_files(self, pattern: str, hostname: str | None, after_id: str | None, limit: int) -> list[FileRow]:
        where = ["filepath GLOB ?"]
        params: list[Any] = [glob_to_sqlite(pattern)]
        if hostname is not None:
            where.append("hostname = ?")
            params.append(hostname)
        if after_id is not None:
            where.append("id > ?")
            params.append(after_id)
        sql = f"SELECT * FROM files WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
        params.append(limit)
        return await self._run(lambda: [_file_row(r) for r in self._c.execute(sql, params)])

    async def recent_files(self, before: tuple[datetime, str] | None, limit: int) -> list[FileRow]:
        # files_updated_at holds (updated_at, id) -- a WITHOUT ROWID table's index carries its
        # primary key -- so this walks the index backwards, ties broken by id, no sort.
        sql = "SELECT * FROM files"
        params: list[Any] = []
        if before is not None:
            sql += " WHERE (updated_at, id) < (?, ?)"
            params += [before[0].timestamp(), before[1]]
        sql += " ORDER BY updated_at DESC, id DESC LIMIT ?"
        params.append(limit)
        return await self._run(lambda: [_file_row(r) for r in self._c.execute(sql, params)])


_WEBHOOK_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_subscriptions (
    id TEXT PRIMARY KEY, url TEXT NOT NULL, events TEXT NOT NULL, secret TEXT NOT NULL, description TEXT,
    created_at REAL NOT NULL, active INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY, subscription_id TEXT NOT NULL, event TEXT NOT NULL, body TEXT NOT NULL,
    created_at REAL NOT NULL, next_attempt_at REAL NOT NULL, attempts INTEGER NOT NULL, status TEXT NOT NULL,
    last_error TEXT) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS webhook_deliveries_queue ON webhook_deliveries (subscription_id, status, id);
CREATE INDEX IF NOT EXISTS webhook_deliveries_status ON webhook_deliveries (status, id);
"""


_SESSION_SCHEMA = """
CREATE TABLE IF NOT EXISTS upload_sessions (
    id TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL, chunk_size INTEGER NOT NULL,
    key_id TEXT NOT NULL, storage_ref TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS upload_sessions_expires_at ON upload_sessions (expires_at);
"""


def _session_row(row: sqlite3.Row) -> SessionRow:
    times = {f: _dt(row[f]) for f in ("created_at", "expires_at")}
    return SessionRow(**{**dict(row), **times})


def _subscription_row(row: sqlite3.Row) -> SubscriptionRow:
    return SubscriptionRow(
        id=row["id"],
        url=row["url"],
        events=tuple(e for e in row["events"].split(",") if e),
        secret=row["secret"],
        description=row["description"],
        created_at=_dt(row["created_at"]),  # type: ignore[arg-type]
        active=bool(row["active"]),
    )


def _delivery_row(row: sqlite3.Row) -> DeliveryRow:
    return DeliveryRow(
        id=row["id"],
        subscription_id=row["subscription_id"],
        event=row["event"],
        body=row["body"],
        created_at=_dt(row["created_at"]),  # type: ignore[arg-type]
        next_attempt_at=_dt(row["next_attempt_at"]),  # type: ignore[arg-type]
        attempts=row["attempts"],
        status=row["status"],
        last_error=row["last_error"],
    )


_CONSOLE: type[ConsoleStore] = SqliteStore  # mypy checks that the backend answers the console's queries
