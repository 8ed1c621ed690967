"""The agent's local index (SQLite) across agent versions: an index written by an older agent
is brought to the current schema in place, keeping what it knew; a newer one is refused. And
the directory summaries a rescan trusts: any write of a file row clears its directory's."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from putplace_agent.index import Entry, Index, State

SHA = "ab" * 32

# The schema version 1 agents wrote (before upload sessions), as they wrote it.
VERSION_1 = f"""
CREATE TABLE files (
    path BLOB PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL, mode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL,
    atime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, state INTEGER NOT NULL, error TEXT
) WITHOUT ROWID;
CREATE INDEX files_pending ON files (state) WHERE state != 0;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('identity', 'server-a');
INSERT INTO files VALUES (X'2f612f62', 5, 1, 2, 3, 33188, 0, 0, 4, '{SHA}', 0, NULL);
INSERT INTO files VALUES (X'2f612f632f64', 6, 1, 2, 7, 33188, 0, 0, 4, '{SHA}', 1, NULL);
PRAGMA user_version = 1;
"""
# Version 2 (before directory summaries) added the sessions table.
VERSION_2 = f"""{VERSION_1}
CREATE TABLE sessions (
    path BLOB PRIMARY KEY, sha256 TEXT NOT NULL, ctime_ns INTEGER NOT NULL, upload_id TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO sessions VALUES (X'2f612f62', '{SHA}', 2, 'upload-1');
PRAGMA user_version = 2;
"""


@pytest.mark.parametrize("version, script", [(1, VERSION_1), (2, VERSION_2)])
def test_an_older_index_is_upgraded_in_place(tmp_path: Path, version: int, script: str) -> None:
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        db.executescript(script)
    index = Index(tmp_path, identity="server-a")
    assert index.signature(b"/a/b") == (5, 1, 2, 3)  # what it knew is kept
    assert index.get(b"/a/c/d") == (Entry(b"/a/c/d", 6, 1, 2, 7, 33188, 0, 0, 4, SHA), State.ANNOUNCE)
    entry = Entry(b"/a/b", 5, 1, 2, 3, 33188, 0, 0, 4, SHA)
    assert index.session_of(entry) == ("upload-1" if version == 2 else None)  # the sessions table exists
    # Every directory of its files is listed, none summarised: the first rescan compares file by file.
    assert index.summaries(b"/a") == {b"/a": None, b"/a/c": None}
    assert index.in_directory(b"/a") == {b"/a/b": (5, 1, 2, 3, State.SYNCED)}
    index.close()
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3


def test_an_index_of_a_newer_agent_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="has schema 99, this agent knows 3"):
        Index(tmp_path)


def entry(path: bytes, ctime_ns: int = 2) -> Entry:
    return Entry(path, 5, 1, ctime_ns, 3, 33188, 0, 0, 4, SHA)


WRITES: dict[str, Callable[[Index], None]] = {
    "hashed again": lambda ix: ix.record_hashed([entry(b"/t/d/x", ctime_ns=9)]),
    "a new file": lambda ix: ix.record_hashed([entry(b"/t/d/new")]),
    "state": lambda ix: ix.set_state([b"/t/d/x"], State.DELETE),
    "advanced": lambda ix: ix.advance([entry(b"/t/d/x")], State.SYNCED, State.UPLOAD),
    "failed": lambda ix: ix.set_failed(b"/t/d/x", "refused"),
    "removed": lambda ix: ix.remove([b"/t/d/x"]),
}


@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES.keys())
def test_every_write_of_a_file_clears_its_directory_summary(tmp_path: Path, write: Callable[[Index], None]) -> None:
    index = Index(tmp_path)
    index.record_hashed([entry(b"/t/d/x"), entry(b"/t/d/y"), entry(b"/t/d/sub/z"), entry(b"/t/other/w")])
    index.set_state([b"/t/d/x", b"/t/d/y", b"/t/d/sub/z", b"/t/other/w"], State.SYNCED)
    for directory in (b"/t/d", b"/t/d/sub", b"/t/other"):
        index.set_summary(directory, b"digest-" + directory)

    write(index)

    # Only the written file's own directory loses its summary: a subdirectory is its own entry.
    assert index.summaries(b"/t") == {b"/t/d": None, b"/t/d/sub": b"digest-/t/d/sub", b"/t/other": b"digest-/t/other"}


def test_a_directory_with_nothing_left_below_it_is_forgotten(tmp_path: Path) -> None:
    index = Index(tmp_path)
    index.record_hashed([entry(b"/t/d/x"), entry(b"/t/d/sub/z"), entry(b"/t/e/y")])
    index.remove([b"/t/e/y", b"/t/d/x"])
    assert index.summaries(b"/t") == {b"/t/d": None, b"/t/d/sub": None}  # /t/d still has a file below it
    index.remove([b"/t/d/sub/z"])
    assert index.summaries(b"/t") == {}


def test_an_index_kept_for_another_identity_forgets_its_directories(tmp_path: Path) -> None:
    index = Index(tmp_path, identity="server-a")
    index.record_hashed([entry(b"/t/d/x")])
    index.set_summary(b"/t/d", b"digest")
    index.close()
    index = Index(tmp_path, identity="server-b")
    assert (index.summaries(b"/t"), index.signature(b"/t/d/x")) == ({}, None)


def test_the_top_directory_is_slash(tmp_path: Path) -> None:
    index = Index(tmp_path)
    index.record_hashed([entry(b"/x"), entry(b"/etc/y")])
    assert index.summaries(b"/") == {b"/": None, b"/etc": None}
    assert list(index.in_directory(b"/")) == [b"/x"]
    assert sorted(index.under(b"/")) == [b"/etc/y", b"/x"]
    assert index.under(b"/etc") == [b"/etc/y"]
