"""The agent's local index: what each file looked like when it was last hashed, and what is
still owed to the server.

A file is re-hashed only when its stat signature (size, mtime_ns, ctime_ns, inode) changed --
the rule restic and borg use. Work the server has not acknowledged stays here as a state, so
an API outage or a restart loses nothing: on start the agent re-sends whatever is pending. A
large file going up in chunks keeps its upload session's id here, so a restart sends only the
chunks the server does not hold.

Each directory holding indexed files has a row in ``dirs``. Its ``digest`` (see
``scanner.digest_of``) summarises the directory's files as they were when every one of them was
last verified unchanged and synced; any write to a file row clears its directory's digest. A
rescan loads these rows only, and reads a directory's file rows only when the digest of what is
on disk differs: per file, a no-change rescan makes no Python object from the index.

Paths are kept as bytes (``os.fsencode``) because file names need not be UTF-8. One SQLite
file in the state directory, used only from the agent's event-loop thread.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

__all__ = ["Entry", "Index", "Row", "Signature", "State", "parent_of"]

log = logging.getLogger(__name__)

Signature = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode
Row = tuple[int, int, int, int, int]  # a signature and the State


class State(IntEnum):
    SYNCED = 0  # the server has the record and its content
    ANNOUNCE = 1  # hashed; the metadata is not yet acknowledged (POST /put_files)
    UPLOAD = 2  # the server asked for the content (POST /upload_file)
    DELETE = 3  # gone from disk; the record is not yet deleted at the server
    FAILED = 4  # the server refused it for good (bad metadata); retried when the file changes


@dataclass(frozen=True, slots=True)
class Entry:
    path: bytes
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    mode: int
    uid: int
    gid: int
    atime_ns: int
    sha256: str

    @property
    def signature(self) -> Signature:
        return (self.size, self.mtime_ns, self.ctime_ns, self.inode)


_COLUMNS = "path, size, mtime_ns, ctime_ns, inode, mode, uid, gid, atime_ns, sha256"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS files (
    path BLOB PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL, mode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL,
    atime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, state INTEGER NOT NULL, error TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_pending ON files (state) WHERE state != {State.SYNCED};
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    path BLOB PRIMARY KEY, sha256 TEXT NOT NULL, ctime_ns INTEGER NOT NULL, upload_id TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dirs (dir BLOB PRIMARY KEY, digest BLOB) WITHOUT ROWID;
INSERT OR IGNORE INTO dirs SELECT parent_of(path), NULL FROM files;
"""
# 1: files and meta. 2: sessions (chunked uploads to resume). 3: dirs (directory summaries). Every
# statement of _SCHEMA is idempotent, so running it again brings any older index to the current
# version: an upgraded index lists the directories of its files, none summarised yet.
_SCHEMA_VERSION = 3
# Said again in queries for a pending state: SQLite uses the partial index ``files_pending``
# only when the query's WHERE implies the index's, which ``state = ?`` alone does not (the
# parameter is unknown when the query is planned). Without it, every start and every retry
# pass read the whole table three times (~40 ms per 100,000 files).
_PENDING = f"state != {State.SYNCED}"


def _below(directory: bytes) -> tuple[bytes, bytes]:
    """The open range of the paths below ``directory`` (which may be ``/``)."""
    prefix = directory if directory.endswith(b"/") else directory + b"/"
    return prefix, prefix[:-1] + b"0"  # "0" follows "/" in ASCII


def parent_of(path: bytes) -> bytes:
    """The directory holding ``path``, spelt as a walk reaches it (``/`` for a top-level name)."""
    return path[: max(path.rfind(b"/"), 1)]


def _ancestors(paths: Iterable[bytes]) -> set[bytes]:
    """Every directory above any of ``paths``."""
    out: set[bytes] = set()
    for path in paths:
        while path != b"/" and b"/" in path:
            path = parent_of(path)
            if path in out:
                break
            out.add(path)
    return out


def _parents(paths: Iterable[bytes]) -> list[tuple[bytes]]:
    """The distinct directories of ``paths``, as parameter rows."""
    return [(d,) for d in {parent_of(p) for p in paths}]


class Index:
    """``identity`` names the catalogue the index describes (server, node name, path mapping): an
    index written for another identity says nothing about this one, so it starts afresh."""

    def __init__(self, state_dir: Path, identity: str = "") -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "index.sqlite3"
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.create_function("parent_of", 1, parent_of, deterministic=True)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # a crash may lose the last commits: they are re-done
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise RuntimeError(f"index {self.path} has schema {version}, this agent knows {_SCHEMA_VERSION}")
        if version != _SCHEMA_VERSION:  # set once: a write at every start costs a checkpoint at exit
            with self._transaction():  # all of it or nothing, should the agent die meanwhile
                for statement in _SCHEMA.split(";"):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        row = self._db.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
        if row is None or row[0] != identity:
            with self._transaction():
                if row is not None:
                    log.warning("the index in %s was kept for %s; starting afresh for %s", state_dir, row[0], identity)
                    self._db.execute("DELETE FROM files")
                    self._db.execute("DELETE FROM dirs")
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('identity', ?)", (identity,))

    def close(self) -> None:
        self._db.close()

    # -- reads ---------------------------------------------------------------------------
    def summaries(self, root: bytes) -> dict[bytes, bytes | None]:
        """Every directory at or under ``root`` that holds indexed files, with its digest (None:
        not summarised). What a rescan starts from: one row per directory, not per file."""
        low, high = _below(root)
        sql = "SELECT dir, digest FROM dirs WHERE (dir > ? AND dir < ?) OR dir = ?"
        return dict(self._db.execute(sql, (low, high, root)).fetchall())

    def signature(self, path: bytes) -> Signature | None:
        """The signature of one indexed file (not one being deleted)."""
        row = self._db.execute(
            "SELECT size, mtime_ns, ctime_ns, inode FROM files WHERE path = ? AND state != ?", (path, State.DELETE)
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2], row[3])

    def in_directory(self, directory: bytes) -> dict[bytes, Row]:
        """The files directly in ``directory``: path -> (size, mtime_ns, ctime_ns, inode, state)."""
        low, high = _below(directory)
        rows = self._db.execute(
            "SELECT path, size, mtime_ns, ctime_ns, inode, state FROM files"
            " WHERE path > ? AND path < ? AND instr(substr(path, ?), x'2f') = 0",
            (low, high, len(low) + 1),
        )
        return {path: (size, mtime_ns, ctime_ns, inode, state) for path, size, mtime_ns, ctime_ns, inode, state in rows}

    def get(self, path: bytes) -> tuple[Entry, State] | None:
        row = self._db.execute(f"SELECT {_COLUMNS}, state FROM files WHERE path = ?", (path,)).fetchone()
        return None if row is None else (Entry(*row[:10]), State(row[10]))

    def under(self, directory: bytes) -> list[bytes]:
        rows = self._db.execute("SELECT path FROM files WHERE path > ? AND path < ?", _below(directory))
        return [r[0] for r in rows]

    def pending(self, state: State, limit: int | None = None) -> list[Entry]:
        sql = f"SELECT {_COLUMNS} FROM files WHERE state = ? AND {_PENDING} ORDER BY path"
        rows = self._db.execute(sql + (f" LIMIT {int(limit)}" if limit else ""), (state,))
        return [Entry(*r) for r in rows]

    def iter_pending_paths(self, state: State) -> Iterator[bytes]:
        for (path,) in self._db.execute(f"SELECT path FROM files WHERE state = ? AND {_PENDING}", (state,)).fetchall():
            yield path

    def owed(self) -> dict[State, int]:
        """How many paths are in each state but SYNCED (what the server is still owed). Read
        through the partial index of pending rows: no scan of the whole table at every exit."""
        rows = self._db.execute(f"SELECT state, COUNT(*) FROM files WHERE state != {State.SYNCED} GROUP BY state")
        return {State(s): n for s, n in rows}

    def session_of(self, e: Entry) -> str | None:
        """The upload session this very version of the file was being sent in, if any."""
        row = self._db.execute(
            "SELECT upload_id FROM sessions WHERE path = ? AND sha256 = ? AND ctime_ns = ?",
            (e.path, e.sha256, e.ctime_ns),
        ).fetchone()
        return None if row is None else str(row[0])

    # -- writes --------------------------------------------------------------------------
    def set_summary(self, directory: bytes, digest: bytes) -> None:
        """Summarise a directory whose files the caller has just found unchanged and all synced
        (``scanner.compare``), with no await in between: nothing else wrote them meanwhile."""
        self._db.execute("UPDATE dirs SET digest = ? WHERE dir = ?", (digest, directory))

    def record_hashed(self, entries: list[Entry]) -> None:
        """New content or metadata: remember the signature and owe the server an announcement."""
        with self._transaction():
            self._db.executemany(
                f"INSERT OR REPLACE INTO files ({_COLUMNS}, state, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,NULL)",
                [
                    (e.path, e.size, e.mtime_ns, e.ctime_ns, e.inode, e.mode, e.uid, e.gid, e.atime_ns, e.sha256, 1)
                    for e in entries
                ],
            )
            # A new directory gets its row (a rescan reads it then), a known one loses its summary.
            self._db.executemany(
                "INSERT OR REPLACE INTO dirs (dir, digest) VALUES (?, NULL)", _parents(e.path for e in entries)
            )

    def set_state(self, paths: Iterable[bytes], state: State, *, only_if: State | None = None) -> None:
        """Move paths to ``state``; with ``only_if``, only those still in that state (a newer change wins)."""
        paths = list(paths)
        sql = "UPDATE files SET state = ?, error = NULL WHERE path = ?"
        params: list[tuple[object, ...]]
        if only_if is None:
            params = [(state, p) for p in paths]
        else:
            sql += " AND state = ?"
            params = [(state, p, only_if) for p in paths]
        with self._transaction():
            self._db.executemany(sql, params)
            self._unsummarise(paths)

    def advance(self, entries: list[Entry], from_state: State, to_state: State) -> list[bool]:
        """Move each entry on, if the index still holds that very version in ``from_state``.

        Answers per entry whether it moved: a newer hash of the same path (or its deletion) wins.
        """
        moved = []
        with self._transaction():
            for e in entries:
                cursor = self._db.execute(
                    "UPDATE files SET state = ? WHERE path = ? AND state = ? AND sha256 = ? AND ctime_ns = ?",
                    (to_state, e.path, from_state, e.sha256, e.ctime_ns),
                )
                moved.append(cursor.rowcount == 1)
            self._unsummarise(e.path for e, ok in zip(entries, moved, strict=True) if ok)
        return moved

    def set_failed(self, path: bytes, error: str) -> None:
        with self._transaction():
            self._db.execute("UPDATE files SET state = ?, error = ? WHERE path = ?", (State.FAILED, error, path))
            self._unsummarise([path])

    def remove(self, paths: Iterable[bytes], *, only_if: State | None = None) -> None:
        paths = list(paths)
        rows: list[tuple[object, ...]]
        if only_if is None:
            rows = [(p,) for p in paths]
            sql = "DELETE FROM files WHERE path = ?"
        else:
            rows = [(p, only_if) for p in paths]
            sql = "DELETE FROM files WHERE path = ? AND state = ?"
        with self._transaction():
            self._db.executemany(sql, rows)
            self._unsummarise(paths)
            # A directory left with nothing indexed below it is forgotten: a rescan need not look.
            self._db.executemany(
                "DELETE FROM dirs WHERE dir = ? AND NOT EXISTS (SELECT 1 FROM files WHERE path > ? AND path < ?)",
                [(d, *_below(d)) for d in _ancestors(paths)],
            )

    def _unsummarise(self, paths: Iterable[bytes]) -> None:
        """Every write of a file row clears its directory's summary (inside the write's transaction)."""
        self._db.executemany("UPDATE dirs SET digest = NULL WHERE dir = ? AND digest IS NOT NULL", _parents(paths))

    def remember_session(self, e: Entry, upload_id: str) -> None:
        """Kept before any chunk is sent: a restart asks the server which chunks it holds."""
        self._db.execute(
            "INSERT OR REPLACE INTO sessions (path, sha256, ctime_ns, upload_id) VALUES (?, ?, ?, ?)",
            (e.path, e.sha256, e.ctime_ns, upload_id),
        )

    def forget_session(self, path: bytes) -> None:
        self._db.execute("DELETE FROM sessions WHERE path = ?", (path,))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN`` … ``COMMIT`` (``ROLLBACK`` on error) on the autocommit connection."""
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
