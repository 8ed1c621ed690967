"""The agent's local index: what each file looked like when it was last hashed, and what is
still owed to the server.

A file is re-hashed only when its stat signature (size, mtime_ns, ctime_ns, inode) changed --
the rule restic and borg use. Work the server has not acknowledged stays here as a state, so
an API outage or a restart loses nothing: on start the agent re-sends whatever is pending. A
large file going up in chunks keeps its upload session's id here, so a restart sends only the
chunks the server does not hold.

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

__all__ = ["Entry", "Index", "Signature", "State"]

log = logging.getLogger(__name__)

Signature = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode


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
"""
# 1: files and meta. 2: sessions (chunked uploads to resume). Every statement of _SCHEMA is
# IF NOT EXISTS, so running it again brings any older index to the current version.
_SCHEMA_VERSION = 2
# Said again in queries for a pending state: SQLite uses the partial index ``files_pending``
# only when the query's WHERE implies the index's, which ``state = ?`` alone does not (the
# parameter is unknown when the query is planned). Without it, every start and every retry
# pass read the whole table three times (~40 ms per 100,000 files).
_PENDING = f"state != {State.SYNCED}"


def _upper_bound(prefix: bytes) -> bytes:
    """The smallest byte string above every path under ``prefix + b'/'``."""
    return prefix + b"0"  # "0" follows "/" in ASCII


class Index:
    """``identity`` names the catalogue the index describes (server, node name, path mapping): an
    index written for another identity says nothing about this one, so it starts afresh."""

    def __init__(self, state_dir: Path, identity: str = "") -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "index.sqlite3"
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # a crash may lose the last commits: they are re-done
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise RuntimeError(f"index {self.path} has schema {version}, this agent knows {_SCHEMA_VERSION}")
        if version != _SCHEMA_VERSION:  # set once: a write at every start costs a checkpoint at exit
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        row = self._db.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
        if row is None or row[0] != identity:
            with self._transaction():
                if row is not None:
                    log.warning("the index in %s was kept for %s; starting afresh for %s", state_dir, row[0], identity)
                    self._db.execute("DELETE FROM files")
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('identity', ?)", (identity,))

    def close(self) -> None:
        self._db.close()

    # -- reads ---------------------------------------------------------------------------
    def signatures(self, root: bytes) -> dict[bytes, Signature]:
        """Signatures of every indexed path at or under ``root`` (a rescan compares against it)."""
        rows = self._db.execute(
            "SELECT path, size, mtime_ns, ctime_ns, inode FROM files"
            " WHERE ((path > ? AND path < ?) OR path = ?) AND state != ?",
            (root + b"/", _upper_bound(root), root, State.DELETE),
        )
        return {path: (size, mtime_ns, ctime_ns, inode) for path, size, mtime_ns, ctime_ns, inode in rows}

    def get(self, path: bytes) -> tuple[Entry, State] | None:
        row = self._db.execute(f"SELECT {_COLUMNS}, state FROM files WHERE path = ?", (path,)).fetchone()
        return None if row is None else (Entry(*row[:10]), State(row[10]))

    def under(self, directory: bytes) -> list[bytes]:
        rows = self._db.execute(
            "SELECT path FROM files WHERE path > ? AND path < ?", (directory + b"/", _upper_bound(directory))
        )
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
    def record_hashed(self, entries: Iterable[Entry]) -> None:
        """New content or metadata: remember the signature and owe the server an announcement."""
        with self._transaction():
            self._db.executemany(
                f"INSERT OR REPLACE INTO files ({_COLUMNS}, state, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,NULL)",
                [
                    (e.path, e.size, e.mtime_ns, e.ctime_ns, e.inode, e.mode, e.uid, e.gid, e.atime_ns, e.sha256, 1)
                    for e in entries
                ],
            )

    def set_state(self, paths: Iterable[bytes], state: State, *, only_if: State | None = None) -> None:
        """Move paths to ``state``; with ``only_if``, only those still in that state (a newer change wins)."""
        sql = "UPDATE files SET state = ?, error = NULL WHERE path = ?"
        params: list[tuple[object, ...]]
        if only_if is None:
            params = [(state, p) for p in paths]
        else:
            sql += " AND state = ?"
            params = [(state, p, only_if) for p in paths]
        with self._transaction():
            self._db.executemany(sql, params)

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
        return moved

    def set_failed(self, path: bytes, error: str) -> None:
        with self._transaction():
            self._db.execute("UPDATE files SET state = ?, error = ? WHERE path = ?", (State.FAILED, error, path))

    def remove(self, paths: Iterable[bytes], *, only_if: State | None = None) -> None:
        rows: list[tuple[object, ...]]
        if only_if is None:
            rows = [(p,) for p in paths]
            sql = "DELETE FROM files WHERE path = ?"
        else:
            rows = [(p, only_if) for p in paths]
            sql = "DELETE FROM files WHERE path = ? AND state = ?"
        with self._transaction():
            self._db.executemany(sql, rows)

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
