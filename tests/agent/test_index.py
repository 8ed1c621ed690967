"""The agent's local index (SQLite) across agent versions: an index written by an older agent
is brought to the current schema in place, keeping what it knew; a newer one is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from putplace_agent.index import Entry, Index

# The schema version 1 agents wrote (before upload sessions), as they wrote it.
VERSION_1 = """
CREATE TABLE files (
    path BLOB PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL, mode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL,
    atime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, state INTEGER NOT NULL, error TEXT
) WITHOUT ROWID;
CREATE INDEX files_pending ON files (state) WHERE state != 0;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('identity', 'server-a');
INSERT INTO files VALUES (X'2f612f62', 5, 1, 2, 3, 33188, 0, 0, 4, '%s', 0, NULL);
PRAGMA user_version = 1;
"""


def test_an_index_of_version_1_is_upgraded_in_place(tmp_path: Path) -> None:
    sha = "ab" * 32
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        db.executescript(VERSION_1 % sha)
    index = Index(tmp_path, identity="server-a")
    assert index.signatures(b"/a") == {b"/a/b": (5, 1, 2, 3)}  # what it knew is kept
    entry = Entry(b"/a/b", 5, 1, 2, 3, 33188, 0, 0, 4, sha)
    assert index.session_of(entry) is None  # the sessions table exists now
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2


def test_an_index_of_a_newer_agent_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="has schema 99, this agent knows 2"):
        Index(tmp_path)
