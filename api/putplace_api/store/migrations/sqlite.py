"""Versions of the SQLite store's schema, kept in ``PRAGMA user_version``.

``SqliteStore`` opens a database inside one ``BEGIN IMMEDIATE`` transaction: it reads the
version, runs ``upgrade`` (each step from that version to ``VERSION``), creates what is missing
and sets the version -- so several API processes opening one file at once migrate it once,
and a failed step leaves the database as it was. A new schema change is a new step here,
with the DDL of its own version written out (never the live schema, which moves on).

- 0: before versions were kept.
- 1: names are (filepath, filepath_escaped): the flag column, unique per (hostname, filepath,
  filepath_escaped); stored names are re-read by ``legacy_name``.
- 2: API keys' limits and quotas (api_keys.hostnames, path_prefixes, max_bytes, max_files) and
  the key that stored each content (contents.stored_by); NULL in existing rows: no limit, no
  quota, stored by no key.
- 3: small contents in packs (putplace_api.storage.packs): contents.pack_id and pack_offset;
  NULL in existing rows: each content its own object, as before.
- 4: upload sessions (the upload_sessions table); an older server refuses the database, as it
  would not know to expire the sessions.

Not a version: the ``leases`` table (any named lease) replaced ``webhook_leases``, which
databases made before it keep, empty and unread (a lease lasts seconds: none to carry over).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from putplace_api.store.migrations import legacy_name

__all__ = ["VERSION", "SchemaTooNew", "upgrade"]

VERSION = 4


class SchemaTooNew(RuntimeError):
    """The database was written by a newer server: this one must not touch it."""


_V1_FILE_COLUMNS = """
    hostname TEXT NOT NULL, filepath TEXT NOT NULL, filepath_escaped INTEGER NOT NULL DEFAULT 0,
    ip_address TEXT NOT NULL, sha256 TEXT NOT NULL,
    file_size INTEGER NOT NULL, file_mode INTEGER NOT NULL, file_uid INTEGER NOT NULL,
    file_gid INTEGER NOT NULL, file_mtime REAL NOT NULL, file_atime REAL NOT NULL,
    file_ctime REAL NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL
"""
_V0_FILE_FIELDS = (
    "hostname, filepath, ip_address, sha256, file_size, file_mode, file_uid, file_gid, "
    "file_mtime, file_atime, file_ctime, created_at, updated_at"
)


def _tables(c: sqlite3.Connection) -> set[str]:
    return {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _to_1(c: sqlite3.Connection) -> None:
    """Rebuild both file tables with the flag (SQLite cannot change a UNIQUE constraint in
    place), then flag the names the old server escaped, in their new escaped form."""
    if not {"files", "file_history"} <= _tables(c):
        return  # the store's schema creates them in this version's shape
    c.execute(
        f"CREATE TABLE files_v1 (id TEXT PRIMARY KEY, {_V1_FILE_COLUMNS}, "
        "UNIQUE (hostname, filepath, filepath_escaped)) WITHOUT ROWID"
    )
    c.execute(f"INSERT INTO files_v1 (id, {_V0_FILE_FIELDS}) SELECT id, {_V0_FILE_FIELDS} FROM files")
    c.execute(
        f"CREATE TABLE file_history_v1 (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, "
        f"{_V1_FILE_COLUMNS}, superseded_at REAL NOT NULL, event TEXT NOT NULL)"
    )
    c.execute(
        f"INSERT INTO file_history_v1 (seq, id, {_V0_FILE_FIELDS}, superseded_at, event) "
        f"SELECT seq, id, {_V0_FILE_FIELDS}, superseded_at, event FROM file_history"
    )
    for table in ("files", "file_history"):
        c.execute(f"DROP TABLE {table}")  # its indexes go with it; the store's schema recreates them
        c.execute(f"ALTER TABLE {table}_v1 RENAME TO {table}")
    for table, key in (("files", "id"), ("file_history", "seq")):
        changed = []
        for row_key, text in c.execute(f"SELECT {key}, filepath FROM {table} WHERE instr(filepath, '\\x') > 0"):
            name = legacy_name(text)
            if name.escaped:
                changed.append((name.filepath, row_key))
        c.executemany(f"UPDATE {table} SET filepath = ?, filepath_escaped = 1 WHERE {key} = ?", changed)


_V2_ADDED = {
    "contents": ("stored_by TEXT",),
    "api_keys": ("hostnames TEXT", "path_prefixes TEXT", "max_bytes INTEGER", "max_files INTEGER"),
}


def _to_2(c: sqlite3.Connection) -> None:
    """Add the columns of keys' limits and quotas (only those missing: a database opened by a
    development build before versions counted them may have some)."""
    tables = _tables(c)
    for table, columns in _V2_ADDED.items():
        if table not in tables:
            continue  # the store's schema creates it with them
        have = {r[1] for r in c.execute(f"PRAGMA table_info({table})")}
        for column in columns:
            if column.split()[0] not in have:
                c.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


def _to_3(c: sqlite3.Connection) -> None:
    """Add where a packed content lies (its index is the store's schema's)."""
    if "contents" in _tables(c):
        c.execute("ALTER TABLE contents ADD COLUMN pack_id TEXT")
        c.execute("ALTER TABLE contents ADD COLUMN pack_offset INTEGER")


def _to_4(c: sqlite3.Connection) -> None:
    """Add the table of upload sessions."""
    c.execute(
        "CREATE TABLE IF NOT EXISTS upload_sessions (id TEXT PRIMARY KEY, sha256 TEXT NOT NULL, "
        "size INTEGER NOT NULL, chunk_size INTEGER NOT NULL, key_id TEXT NOT NULL, storage_ref TEXT NOT NULL, "
        "created_at REAL NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID"
    )
    c.execute("CREATE INDEX IF NOT EXISTS upload_sessions_expires_at ON upload_sessions (expires_at)")


_STEPS: dict[int, Callable[[sqlite3.Connection], None]] = {
    0: _to_1,
    1: _to_2,
    2: _to_3,
    3: _to_4,
}  # from version -> step


def upgrade(c: sqlite3.Connection) -> None:
    """Bring a database up to ``VERSION``; call inside a write transaction. A new (empty) one
    has nothing to upgrade: the store's schema creates this version's tables."""
    version = int(c.execute("PRAGMA user_version").fetchone()[0])
    if version == 0 and not _tables(c):
        return
    if version > VERSION:
        raise SchemaTooNew(
            f"the database has schema version {version}, newer than this server's {VERSION}: "
            "run the newer PutPlace server (or restore a backup taken before the upgrade)"
        )
    while version < VERSION:
        _STEPS[version](c)
        version += 1
