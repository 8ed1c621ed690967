"""The metadata store contract: one suite, run unchanged against every backend.

``store`` is parametrized over the embedded SQLite store (a file in tmp_path) and the MongoDB
store against FerretDB (the session fixture ``mongodb_url``; each test gets its own database).
Every time passed in is millisecond-aligned, the precision both backends keep.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit, urlunsplit

import pytest

from putplace_api.errors import BackendUnavailable
from putplace_api.store.base import (
    FileQuery,
    KeyRow,
    KeyUsage,
    MetadataStore,
    PackMove,
    PackUsage,
    PutResult,
    SessionRow,
    SessionStore,
    StoredContent,
    Visibility,
    is_object_id,
)
from putplace_api.store.migrations import sqlite as schema
from putplace_api.store.migrations.sqlite import SchemaTooNew
from putplace_api.store.mongo import MongoStore
from putplace_api.store.sqlite import SqliteStore
from putplace_client.models import FileMetadata
from putplace_client.names import Name, to_bytes

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def sha(n: object) -> str:
    return hashlib.sha256(str(n).encode("utf-8", "surrogateescape")).hexdigest()


def meta(
    path: str, host: str = "node-1", content: object = None, size: int = 100, mtime: float = 1.7e9
) -> FileMetadata:
    return FileMetadata(
        filepath=path,
        hostname=host,
        ip_address="10.0.0.1",
        sha256=sha(path if content is None else content),
        file_size=size,
        file_mode=0o100644,
        file_uid=1000,
        file_gid=1000,
        file_mtime=mtime,
        file_atime=mtime + 0.5,
        file_ctime=mtime + 0.25,
    )


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@pytest.fixture(params=["sqlite", "mongodb"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], MetadataStore]]:
    """A factory of unopened stores that all share one fresh database."""
    if request.param == "sqlite":
        yield lambda: SqliteStore(tmp_path / "metadata.db")
        return
    base = request.getfixturevalue("mongodb_url")  # fails (never skips) when FerretDB cannot start
    name = f"contract_{uuid.uuid4().hex[:20]}"
    url = _with_database(base, name)
    yield lambda: MongoStore(url, timeout=10.0)
    import pymongo

    with pymongo.MongoClient(base, serverSelectionTimeoutMS=5000) as client:
        client.drop_database(name)


@pytest.fixture
async def store(make_store: Callable[[], MetadataStore], anyio_backend: str) -> AsyncIterator[MetadataStore]:
    s = make_store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def current(store: MetadataStore, host: str | None = None, **kw: object) -> list:
    return await store.list_files(FileQuery(hostname=host, limit=100_000, **kw))  # type: ignore[arg-type]


# -- file records and their history ---------------------------------------------------------


async def test_insert_unchanged_changed(store: MetadataStore) -> None:
    first = meta("/data/a.txt")
    (put,) = await store.put_files([first], T0)
    assert is_object_id(put.file.id)
    assert put.file.meta == first
    assert put.file.created_at == put.file.updated_at == T0
    assert put.file.created_at.utcoffset() == timedelta(0)

    # Same metadata again: the record is untouched (updated_at stays), no history.
    (again,) = await store.put_files([first], at(10))
    assert again.file == put.file
    assert await store.history("node-1", "/data/a.txt", 10, None) == []

    # Changed metadata: same id, created_at kept, updated_at moves, old version archived.
    second = meta("/data/a.txt", content="v2", size=200, mtime=1.8e9)
    (changed,) = await store.put_files([second], at(20))
    assert changed.file.id == put.file.id
    assert changed.file.meta == second
    assert changed.file.created_at == T0
    assert changed.file.updated_at == at(20)

    (hist,) = await store.history("node-1", "/data/a.txt", 10, None)
    assert hist.event == "replaced"
    assert hist.superseded_at == at(20)
    assert hist.file == put.file  # the previous version, exactly as it was

    (now_current,) = await current(store)
    assert now_current == changed.file


async def test_times_read_back_as_returned(store: MetadataStore) -> None:
    # Whatever precision a backend keeps, what a write returns is what a later read gives.
    odd = T0.replace(microsecond=654321)
    (put,) = await store.put_files([meta("/precise")], odd)
    assert abs(put.file.created_at - odd) < timedelta(milliseconds=1)
    (read,) = await current(store)
    assert read == put.file
    assert await store.get_content(put.content.sha256) == put.content
    (put2,) = await store.put_files([meta("/precise", content="2")], odd + timedelta(microseconds=7))
    (hist,) = await store.history("node-1", "/precise", 10, None)
    assert hist.file == put.file and hist.superseded_at == put2.file.updated_at
    assert [r.id for r in await current(store, changed_since=put2.file.updated_at)] == [put.file.id]


async def test_a_change_in_any_field_is_a_change(store: MetadataStore) -> None:
    base = meta("/f")
    (put,) = await store.put_files([base], T0)
    for n, field_value in enumerate(
        [("ip_address", "10.9.9.9"), ("file_mode", 0o100600), ("file_uid", 0), ("file_gid", 5), ("file_atime", 1.0)],
        start=1,
    ):
        field, value = field_value
        changed = base.model_copy(update={field: value})
        (res,) = await store.put_files([changed], at(n))
        assert res.file.id == put.file.id and res.file.updated_at == at(n)
        base = changed
    assert len(await store.history("node-1", "/f", 100, None)) == 5


async def test_delete_moves_to_history(store: MetadataStore) -> None:
    v1, v2 = meta("/d/x"), meta("/d/x", content="2")
    await store.put_files([v1, meta("/d/other")], T0)
    (put2,) = await store.put_files([v2], at(1))

    assert await store.delete_file("node-1", "/d/x", at(2)) is True
    assert [r.meta.filepath for r in await current(store)] == ["/d/other"]
    assert await store.delete_file("node-1", "/d/x", at(3)) is False
    assert await store.delete_file("node-2", "/d/other", at(3)) is False  # another host's path

    hist = await store.history("node-1", "/d/x", 10, None)
    assert [(h.event, h.superseded_at, h.file.meta) for h in hist] == [
        ("deleted", at(2), v2),
        ("replaced", at(1), v1),
    ]
    assert hist[0].file == put2.file

    # Put again after a delete: a new record with a new id, the history stays.
    (again,) = await store.put_files([v1], at(5))
    assert again.file.id != put2.file.id and again.file.created_at == at(5)
    assert len(await store.history("node-1", "/d/x", 10, None)) == 2
    assert await store.history("node-1", "/d/other", 10, None) == []


async def test_history_newest_first_limit_and_before(store: MetadataStore) -> None:
    versions = [meta("/h", content=n) for n in range(6)]
    for n, v in enumerate(versions):
        await store.put_files([v], at(n))
    await store.put_files([meta("/h", host="node-2", content="x")], at(1))  # another host, same path
    await store.put_files([meta("/h", host="node-2", content="y")], at(2))

    hist = await store.history("node-1", "/h", 100, None)
    assert [h.superseded_at for h in hist] == [at(5), at(4), at(3), at(2), at(1)]
    assert [h.file.meta for h in hist] == [versions[4], versions[3], versions[2], versions[1], versions[0]]
    assert all(h.event == "replaced" for h in hist)

    assert [h.superseded_at for h in await store.history("node-1", "/h", 2, None)] == [at(5), at(4)]
    # `before` is exclusive: the page after the one ending at at(4).
    assert [h.superseded_at for h in await store.history("node-1", "/h", 2, at(4))] == [at(3), at(2)]
    assert await store.history("node-1", "/h", 10, at(1)) == []
    assert await store.history("node-1", "/h", 0, None) == []
    assert len(await store.history("node-2", "/h", 10, None)) == 1
    assert await store.history("node-1", "/nothing", 10, None) == []


async def test_batch_with_duplicate_sha_and_the_same_path_twice(store: MetadataStore) -> None:
    a1 = meta("/b/a", content="shared", size=7)
    b = meta("/b/b", content="shared", size=7)
    c = meta("/b/c", content="own", size=3)
    a2 = meta("/b/a", content="newer", size=9)
    a2_again = meta("/b/a", content="newer", size=9)
    batch = [a1, b, c, a2, a2_again]
    results = await store.put_files(batch, T0)

    assert [r.file.meta for r in results] == batch  # input order
    assert results[0].file.id == results[3].file.id == results[4].file.id
    assert len({results[0].file.id, results[1].file.id, results[2].file.id}) == 3
    assert all(r.file.created_at == T0 and r.file.updated_at == T0 for r in results)
    assert [r.content.sha256 for r in results] == [m.sha256 for m in batch]
    assert results[0].content == results[1].content
    assert results[0].content.size == 7 and results[2].content.size == 3 and results[3].content.size == 9

    # The first version of /b/a was replaced within the batch; the identical repeat was not.
    (hist,) = await store.history("node-1", "/b/a", 10, None)
    assert hist.event == "replaced" and hist.file.meta == a1 and hist.superseded_at == T0
    assert hist.file.id == results[0].file.id
    rows = {r.meta.filepath: r for r in await current(store)}
    assert set(rows) == {"/b/a", "/b/b", "/b/c"}
    assert rows["/b/a"] == results[4].file
    assert await store.put_files([], T0) == []


async def test_results_in_input_order_over_a_mixed_batch(store: MetadataStore) -> None:
    # More paths than one query (500) and more changes than one write command (50) take,
    # over several hosts.
    old = [meta(f"/m/{n:04d}", host=f"node-{n % 3}") for n in range(700)]
    first = await store.put_files(old, T0)
    ids = {(r.file.meta.hostname, r.file.meta.filepath): r.file.id for r in first}
    assert len(set(ids.values())) == 700

    unchanged = old[:300]
    changed = [m.model_copy(update={"file_mtime": 2e9}) for m in old[500:560]]
    new = [meta(f"/m/new/{n:04d}", host=f"node-{n % 2}") for n in range(300)]
    batch = unchanged + changed + new
    random.Random(7).shuffle(batch)
    results = await store.put_files(batch, at(60))

    assert [r.file.meta for r in results] == batch
    for m, r in zip(batch, results, strict=True):
        key = (m.hostname, m.filepath)
        if key in ids:
            assert r.file.id == ids[key] and r.file.created_at == T0
            assert r.file.updated_at == (T0 if m.file_mtime == 1.7e9 else at(60))
        else:
            assert r.file.created_at == r.file.updated_at == at(60)
        assert r.content.sha256 == m.sha256
    assert len(await current(store)) == 1000
    assert (await store.stats()).files == 1000
    assert len(await store.history("node-2", "/m/0500", 10, None)) == 1
    assert await store.history("node-0", "/m/0000", 10, None) == []


async def test_concurrent_puts_of_one_path(store: MetadataStore) -> None:
    versions = [meta("/race", content=n) for n in range(10)]
    results = await asyncio.gather(*(store.put_files([v], T0) for v in versions))
    ids = {r.file.id for (r,) in results}
    assert len(ids) == 1
    (row,) = await current(store)
    assert row.id in ids
    hist = await store.history("node-1", "/race", 100, None)
    # Every version is either current or archived exactly once.
    seen = sorted([row.meta.sha256, *(h.file.meta.sha256 for h in hist)])
    assert seen == sorted(v.sha256 for v in versions)


async def test_concurrent_puts_keep_their_own_times(store: MetadataStore) -> None:
    # Concurrent calls may be written together (SQLite's group commit): each keeps its own time.
    results = await asyncio.gather(*(store.put_files([meta(f"/t/{n}"), meta(f"/u/{n}")], at(n)) for n in range(6)))
    assert [[(r.file.meta.filepath, r.file.created_at) for r in rs] for rs in results] == [
        [(f"/t/{n}", at(n)), (f"/u/{n}", at(n))] for n in range(6)
    ]
    assert sorted((r.meta.filepath, r.updated_at) for r in await current(store)) == sorted(
        [(f"/{d}/{n}", at(n)) for n in range(6) for d in "tu"]
    )


async def test_a_failing_call_does_not_fail_the_calls_written_with_it(store: MetadataStore) -> None:
    # SQLite writes concurrent calls as one group: a group that fails is written call by call.
    bad = meta("/bad").model_copy(update={"file_size": 2**70})  # no database stores it
    outcome = await asyncio.gather(
        *(store.put_files([meta(f"/ok/{n}")], at(n)) for n in range(3)),
        store.put_files([bad], T0),
        *(store.put_files([meta(f"/ok/{n}")], at(n)) for n in range(3, 6)),
        return_exceptions=True,
    )
    assert isinstance(outcome[3], Exception) and not isinstance(outcome[3], BackendUnavailable), outcome[3]
    good = [o for n, o in enumerate(outcome) if n != 3]
    assert [[r.file.meta.filepath for r in cast(list[PutResult], o)] for o in good] == [[f"/ok/{n}"] for n in range(6)]
    assert sorted(r.meta.filepath for r in await current(store)) == [f"/ok/{n}" for n in range(6)]


async def test_concurrent_puts_and_deletes_of_one_path(store: MetadataStore) -> None:
    base = meta("/race", content="base")
    await store.put_files([base], T0)
    versions = [meta("/race", content=n) for n in range(8)]
    outcome = await asyncio.gather(
        *(store.put_files([v, meta(f"/other/{n}")], at(1)) for n, v in enumerate(versions)),
        *(store.delete_file("node-1", "/race", at(1)) for _ in range(3)),
    )
    deletes = outcome[len(versions) :]
    rows = await current(store, path_prefix="/race")
    hist = await store.history("node-1", "/race", 100, None)
    assert len(rows) <= 1
    assert [h.event for h in hist].count("deleted") == deletes.count(True) >= 1
    # Every version written is current or archived exactly once.
    seen = sorted([*(r.meta.sha256 for r in rows), *(h.file.meta.sha256 for h in hist)])
    assert seen == sorted([base.sha256, *(v.sha256 for v in versions)])
    assert len(await current(store, path_prefix="/other/")) == 8


# -- content records -------------------------------------------------------------------------


async def test_content_created_unstored_then_mark_stored(store: MetadataStore) -> None:
    m = meta("/c/file", content="payload", size=42)
    (put,) = await store.put_files([m], T0)
    assert put.content.sha256 == m.sha256
    assert put.content.size == 42 and put.content.stored is False
    assert put.content.first_seen_at == T0
    assert put.content.stored_at is None and put.content.mime_type is None and put.content.storage_path is None
    assert await store.get_content(m.sha256) == put.content
    assert await store.get_content(sha("unknown")) is None

    stored = await store.mark_stored(m.sha256, 42, "text/plain", "ab/cd/abcd", at(5))
    assert stored.stored is True and stored.stored_at == at(5)
    assert stored.mime_type == "text/plain" and stored.storage_path == "ab/cd/abcd"
    assert stored.first_seen_at == T0 and stored.size == 42
    assert await store.get_content(m.sha256) == stored

    # A second upload of the same content: the first stored_at is kept.
    again = await store.mark_stored(m.sha256, 42, None, "ab/cd/abcd2", at(9))
    assert again.stored_at == at(5) and again.stored is True
    assert again.mime_type is None and again.storage_path == "ab/cd/abcd2"

    # Announcing the content again does not reset it.
    (put2,) = await store.put_files([meta("/c/copy", content="payload", size=42)], at(10))
    assert put2.content == again

    # Stored without ever being announced: the record is created.
    direct = await store.mark_stored(sha("direct"), 5, None, "x/y", at(11))
    assert direct.first_seen_at == at(11) and direct.stored_at == at(11) and direct.stored is True


async def test_announcing_new_known_and_stored_contents_in_one_batch(store: MetadataStore) -> None:
    """New contents are created unstored with the first size announced; known ones are answered
    as they are (an announced size never changes them), whether stored or not."""
    await store.put_files([meta("/k/unstored", content="known", size=5)], T0)
    await store.mark_stored(sha("stored"), 6, None, "s/t", at(1))
    batch = [
        meta("/k/new-1", content="new", size=3),
        meta("/k/new-2", content="new", size=99),  # the same new content: the first size wins
        meta("/k/known", content="known", size=77),
        meta("/k/stored", content="stored", size=88),
        meta("/k/other", content="other", size=4),
    ]
    results = await store.put_files(batch, at(2))
    answered = {r.file.meta.filepath: (r.content.size, r.content.stored, r.content.first_seen_at) for r in results}
    assert answered == {
        "/k/new-1": (3, False, at(2)),
        "/k/new-2": (3, False, at(2)),
        "/k/known": (5, False, T0),
        "/k/stored": (6, True, at(1)),
        "/k/other": (4, False, at(2)),
    }
    rows = await store.contents({sha("new"), sha("known"), sha("stored"), sha("other")})
    assert {s: (r.size, r.stored) for s, r in rows.items()} == {
        sha("new"): (3, False),
        sha("known"): (5, False),
        sha("stored"): (6, True),
        sha("other"): (4, False),
    }


async def test_mark_stored_many(store: MetadataStore) -> None:
    announced = meta("/batch/a", content="announced", size=9)
    await store.put_files([announced], T0)
    await store.mark_stored(sha("earlier"), 7, None, "e", at(1))
    items = [
        StoredContent(announced.sha256, 9, None, "a/path"),
        StoredContent(sha("earlier"), 7, "text/plain", "e2"),
        StoredContent(sha("never announced"), 3, None, "n"),
    ]
    await store.mark_stored_many(items, at(5))
    rows = await store.contents({i.sha256 for i in items})
    assert {s: (r.stored, r.size, r.storage_path) for s, r in rows.items()} == {
        i.sha256: (True, i.size, i.storage_path) for i in items
    }
    assert rows[announced.sha256].first_seen_at == T0 and rows[announced.sha256].stored_at == at(5)
    assert rows[sha("earlier")].stored_at == at(1)  # the first upload keeps stored_at


async def test_packed_contents_their_usage_and_moves(store: MetadataStore) -> None:
    p1, p2 = "1" * 32, "2" * 32
    packed = [StoredContent(sha(f"p{i}"), 10 + i, None, f"pk#{i}", None, p1, 100 * i) for i in range(3)]
    await store.mark_stored_many([*packed, StoredContent(sha("alone"), 4, None, "own object")], at(1))
    rows = await store.contents({sha("p1"), sha("alone")})
    assert (rows[sha("p1")].pack_id, rows[sha("p1")].pack_offset) == (p1, 100)
    assert (rows[sha("alone")].pack_id, rows[sha("alone")].pack_offset) == (None, None)
    assert await store.pack_usage([p1, p2]) == {p1: PackUsage(3, 33)}
    assert [r.sha256 for r in await store.packed_contents(p1)] == [sha(f"p{i}") for i in range(3)]

    # Moved only while still where the move says: a stale move (wrong offset) changes nothing.
    moves = [PackMove(sha("p0"), p1, 0, p2, 0, "new#0"), PackMove(sha("p2"), p1, 999, p2, 10, "new#10")]
    assert await store.move_packed(moves) == {sha("p0")}
    moved = await store.get_content(sha("p0"))
    assert moved is not None and (moved.pack_id, moved.pack_offset, moved.storage_path) == (p2, 0, "new#0")
    assert moved.stored_at == at(1) and moved.size == 10
    assert await store.pack_usage([p1, p2]) == {p1: PackUsage(2, 23), p2: PackUsage(1, 10)}

    # A single upload storing the content again points at its own object; a record restored by gc keeps its pack.
    await store.mark_stored(sha("p1"), 11, None, "own", at(2))
    alone = await store.get_content(sha("p1"))
    assert alone is not None and (alone.pack_id, alone.pack_offset) == (None, None)
    row = await store.get_content(sha("p2"))
    assert row is not None and await store.delete_contents_if_unchanged([row]) == {sha("p2")}
    assert await store.pack_usage([p1]) == {}
    await store.restore_contents([row])
    assert await store.get_content(sha("p2")) == row and await store.pack_usage([p1]) == {p1: PackUsage(1, 12)}


async def test_contents_in_one_call(store: MetadataStore) -> None:
    metas = [meta(f"/many/{i}", content=f"c{i}") for i in range(1200)]  # over any one-query chunk
    await store.put_files(metas, T0)
    await store.mark_stored(metas[7].sha256, 100, None, "x", at(1))
    wanted = {m.sha256 for m in metas} | {sha("absent")}
    found = await store.contents(wanted)
    assert set(found) == {m.sha256 for m in metas}
    assert found[metas[7].sha256].stored is True
    assert sum(c.stored for c in found.values()) == 1
    assert await store.contents(set()) == {}


async def test_file_by_sha(store: MetadataStore) -> None:
    r1, r2 = await store.put_files([meta("/s/1", content="same"), meta("/s/2", content="same")], T0)
    found = await store.file_by_sha(sha("same"))
    assert found is not None and found.id == min(r1.file.id, r2.file.id)
    assert found == (r1.file if found.id == r1.file.id else r2.file)
    assert await store.file_by_sha(sha("nope")) is None


# -- listing -----------------------------------------------------------------------------------


async def test_list_files_filters(store: MetadataStore) -> None:
    paths = [
        "/data/a/1",
        "/data/a/2",
        "/data/ab/1",
        "/data/a",
        "/data/b/1",
        "/données/é/1",
        "/données/e/1",
        "/données/éa/1",
        "/u/😀/1",
        "/u/中文/1",
    ]
    await store.put_files([meta(p) for p in paths], T0)
    await store.put_files([meta("/data/a/1", host="node-2")], T0)

    async def paths_of(**kw: object) -> list[str]:
        return sorted(r.meta.filepath for r in await current(store, **kw))  # type: ignore[arg-type]

    assert await paths_of(host="node-2") == ["/data/a/1"]
    assert len(await paths_of(host="node-1")) == len(paths)
    assert await paths_of(host="nobody") == []
    # A directory prefix does not match a sibling whose name merely starts the same way...
    assert await paths_of(host="node-1", path_prefix="/data/a/") == ["/data/a/1", "/data/a/2"]
    # ...while a bare string prefix does (it is a string prefix, not a path component match).
    assert await paths_of(host="node-1", path_prefix="/data/a") == ["/data/a", "/data/a/1", "/data/a/2", "/data/ab/1"]
    assert await paths_of(host="node-1", path_prefix="/données/é/") == ["/données/é/1"]
    assert await paths_of(host="node-1", path_prefix="/données/é") == ["/données/é/1", "/données/éa/1"]
    assert await paths_of(host="node-1", path_prefix="/u/") == ["/u/中文/1", "/u/😀/1"]
    assert await paths_of(host="node-1", path_prefix="/u/😀") == ["/u/😀/1"]
    assert await paths_of(path_prefix="/data/a/1") == ["/data/a/1", "/data/a/1"]
    assert await paths_of(path_prefix="/nothing") == []
    assert await paths_of(path_prefix="/data/b/1", sha256=sha("/data/b/1")) == ["/data/b/1"]
    assert await paths_of(sha256=sha("/data/a/1")) == ["/data/a/1", "/data/a/1"]
    assert await store.list_files(FileQuery(limit=0)) == []


async def test_list_files_changed_since(store: MetadataStore) -> None:
    await store.put_files([meta("/t/old"), meta("/t/changed")], T0)
    await store.put_files([meta("/t/changed", content="2")], at(10))
    await store.put_files([meta("/t/old")], at(15))  # unchanged: updated_at stays T0
    await store.put_files([meta("/t/new")], at(20))

    async def since(when: datetime) -> list[str]:
        return sorted(r.meta.filepath for r in await current(store, changed_since=when))

    assert await since(T0) == ["/t/changed", "/t/new", "/t/old"]
    assert await since(at(10)) == ["/t/changed", "/t/new"]  # inclusive
    assert await since(at(11)) == ["/t/new"]
    assert await since(at(21)) == []


async def test_cursor_pagination(store: MetadataStore) -> None:
    files = [meta(f"/p/{n:03d}", host="node-1" if n % 4 else "node-2") for n in range(250)]
    await store.put_files(files[:130], T0)
    await store.put_files(files[130:], at(1))
    everything = await current(store)
    assert len(everything) == 250
    assert [r.id for r in everything] == sorted(r.id for r in everything)

    for host, expected in ((None, 250), ("node-1", 187)):
        seen: list[str] = []
        after = None
        pages = 0
        while True:
            page = await store.list_files(FileQuery(hostname=host, after_id=after, limit=40))
            assert len(page) <= 40
            assert [r.id for r in page] == sorted(r.id for r in page)
            if after is not None:
                assert all(r.id > after for r in page)
            seen += [r.id for r in page]
            pages += 1
            if len(page) < 40:
                break
            after = page[-1].id
        assert len(seen) == len(set(seen)) == expected
        if host is None:
            assert seen == [r.id for r in everything]
        assert pages == expected // 40 + 1


async def test_non_utf8_path_round_trip(store: MetadataStore) -> None:
    raw = b"/data/caf\xe9/na\xefve.txt".decode("utf-8", "surrogateescape")  # as os.fsdecode gives it
    m = meta(raw, host="node-\udcff")
    assert (m.filepath, m.filepath_escaped) == ("/data/caf\\xe9/na\\xefve.txt", True)
    assert m.hostname == "node-\\xff"
    (put,) = await store.put_files([m], T0)
    assert put.file.meta == m

    (listed,) = await current(store, host="node-\\xff", path_prefix="/data/caf\\xe9/", path_prefix_escaped=True)
    assert listed == put.file
    assert await current(store, host="node-\\xff", path_prefix="/data/") == [put.file]
    (again,) = await store.put_files([meta(raw, host="node-\udcff")], at(1))
    assert again.file == put.file  # the same name: unchanged, not a new record
    assert await store.delete_file("node-\\xff", m.filepath, at(2)) is False  # the plain text names nothing
    assert await store.delete_file("node-\\xff", m.filepath, at(2), escaped=True) is True
    (hist,) = await store.history("node-\\xff", m.filepath, 10, None, escaped=True)
    assert hist.file.meta == m and hist.event == "deleted"


async def test_a_literal_escape_and_the_byte_are_two_names(store: MetadataStore) -> None:
    """The text \\xe9 and the byte 0xE9 (and a backslash beside such a byte) are distinct
    names: distinct records, each with its own history, each deleted alone."""
    literal, byte = meta("/d/caf\\xe9", content="literal"), meta("/d/caf\udce9", content="byte")
    slash, slash_byte = meta("/d/a\\b", content=1), meta("/d/a\\b\udcff", content=2)
    assert (literal.filepath, literal.filepath_escaped) == ("/d/caf\\xe9", False)
    assert (byte.filepath, byte.filepath_escaped) == ("/d/caf\\xe9", True)
    assert (slash_byte.filepath, slash_byte.filepath_escaped) == ("/d/a\\\\b\\xff", True)
    puts = await store.put_files([literal, byte, slash, slash_byte], T0)
    assert len({p.file.id for p in puts}) == 4 and [p.file.meta for p in puts] == [literal, byte, slash, slash_byte]
    assert len(await current(store, path_prefix="/d/")) == 4

    async def under(prefix: str, escaped: bool = False) -> list[FileMetadata]:
        rows = await current(store, path_prefix=prefix, path_prefix_escaped=escaped)
        return sorted((r.meta for r in rows), key=lambda m: (m.filepath, m.filepath_escaped))

    assert await under("/d/caf\\xe9") == [literal]  # a plain prefix: the bytes \ x e 9
    assert await under("/d/caf\\xe9", escaped=True) == [byte]
    assert await under("/d/a\\") == [slash_byte, slash]  # escaped names under it too
    assert await under("/d/a\\\\", escaped=True) == [slash_byte]

    changed = meta("/d/caf\\xe9", content="literal, changed")
    (put,) = await store.put_files([changed], at(1))
    assert put.file.id == puts[0].file.id
    (hist,) = await store.history("node-1", "/d/caf\\xe9", 10, None)
    assert hist.file.meta == literal and hist.event == "replaced"
    assert await store.history("node-1", "/d/caf\\xe9", 10, None, escaped=True) == []

    assert await store.delete_file("node-1", "/d/caf\\xe9", at(2), escaped=True) is True
    assert await store.delete_file("node-1", "/d/caf\\xe9", at(3), escaped=True) is False
    (gone,) = await store.history("node-1", "/d/caf\\xe9", 10, None, escaped=True)
    assert gone.file.meta == byte and gone.event == "deleted"
    assert [r.meta for r in await current(store, path_prefix="/d/caf")] == [changed]


# Records as the server wrote them before names were flagged (schema version 0): the text it
# stored, and the name it stands for now.
_OLD_NAMES = [
    ("/data/caf\\xe9", "/data/caf\\xe9", True),  # the byte 0xE9, escaped by escape_path
    ("/a\\b\\xff", "/a\\\\b\\xff", True),  # a backslash beside a byte: now doubled
    ("/run/dev-disk-by\\x2duuid-1.swap", "/run/dev-disk-by\\x2duuid-1.swap", False),  # systemd's: literal
    ("/caf\\xc3\\xa9", "/caf\\xc3\\xa9", False),  # bytes that are UTF-8: escape_path kept those
    ("/plain/é", "/plain/é", False),
]
_V0_SQLITE = """
CREATE TABLE files (id TEXT PRIMARY KEY, hostname TEXT NOT NULL, filepath TEXT NOT NULL,
    ip_address TEXT NOT NULL, sha256 TEXT NOT NULL, file_size INTEGER NOT NULL, file_mode INTEGER NOT NULL,
    file_uid INTEGER NOT NULL, file_gid INTEGER NOT NULL, file_mtime REAL NOT NULL, file_atime REAL NOT NULL,
    file_ctime REAL NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    UNIQUE (hostname, filepath)) WITHOUT ROWID;
CREATE TABLE file_history (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, hostname TEXT NOT NULL,
    filepath TEXT NOT NULL, ip_address TEXT NOT NULL, sha256 TEXT NOT NULL, file_size INTEGER NOT NULL,
    file_mode INTEGER NOT NULL, file_uid INTEGER NOT NULL, file_gid INTEGER NOT NULL, file_mtime REAL NOT NULL,
    file_atime REAL NOT NULL, file_ctime REAL NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    superseded_at REAL NOT NULL, event TEXT NOT NULL);
CREATE INDEX file_history_path ON file_history (hostname, filepath, superseded_at);
"""


async def _write_old_records(store: MetadataStore, records: list[dict[str, object]]) -> None:
    """Write ``records`` (files, and each one's history entry) as the old server did."""
    history = [{**r, "superseded_at": T0, "event": "replaced"} for r in records]
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store._path) as db:
            db.executescript(_V0_SQLITE)
            for table, rows in (("files", records), ("file_history", history)):
                for row in rows:
                    values = {k: v.timestamp() if isinstance(v, datetime) else v for k, v in row.items()}
                    columns = ", ".join(values)
                    db.execute(
                        f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' for _ in values)})",
                        list(values.values()),
                    )
        return
    assert isinstance(store, MongoStore)
    db = store._db
    await db["files"].create_index([("hostname", 1), ("filepath", 1)], name="hostname_filepath", unique=True)
    await db["files"].insert_many(
        [{"_id": r["id"], **{k: v for k, v in r.items() if k != "id"}, "rev": "r1"} for r in records]
    )
    await db["file_history"].insert_many([{"_id": f"{h['id']}@r0", **h, "order": h["id"]} for h in history])


async def test_records_of_the_old_format_are_migrated(make_store: Callable[[], MetadataStore]) -> None:
    store, together = make_store(), make_store()  # two replicas starting at once
    records = [
        {
            **meta(old).model_dump(exclude={"filepath_escaped"}),
            "id": f"{n:024x}",
            "created_at": T0,
            "updated_at": T0,
        }
        for n, (old, _, _) in enumerate(_OLD_NAMES, 1)
    ]
    await _write_old_records(store, records)
    await asyncio.gather(store.open(), together.open())
    await together.close()
    try:
        if isinstance(store, SqliteStore):
            with sqlite3.connect(store._path) as db:
                assert db.execute("PRAGMA user_version").fetchone() == (schema.VERSION,)
        else:
            assert isinstance(store, MongoStore)
            assert "hostname_filepath" not in await store._db["files"].index_information()  # the old unique index
        rows = {r.id: r.meta for r in await current(store)}
        assert {i: (m.filepath, m.filepath_escaped) for i, m in rows.items()} == {
            r["id"]: (new, escaped) for r, (_, new, escaped) in zip(records, _OLD_NAMES, strict=True)
        }
        for r, (old, new, escaped) in zip(records, _OLD_NAMES, strict=True):
            (hist,) = await store.history("node-1", new, 10, None, escaped=escaped)
            assert (hist.file.id, hist.file.meta) == (r["id"], rows[str(r["id"])])
            # What the server makes of the same name today is the migrated record, unchanged.
            (again,) = await store.put_files([meta(os.fsdecode(to_bytes(Name(new, escaped))), content=old)], at(1))
            assert (again.file.id, again.file.updated_at) == (r["id"], T0)
    finally:
        await store.close()
    reopened = make_store()  # a second open finds nothing left to migrate
    await reopened.open()
    try:
        assert {r.id: r.meta for r in await current(reopened)} == rows
    finally:
        await reopened.close()


async def test_an_old_record_a_newer_one_superseded_becomes_history(mongodb_url: str, anyio_backend: str) -> None:
    """MongoDB: old-shape records (written by an older replica still running) whose names
    migrated records hold already are kept as history of those names, not lost nor duplicated."""
    name = f"migrate_{uuid.uuid4().hex[:20]}"
    store = MongoStore(_with_database(mongodb_url, name), timeout=10.0)
    try:
        await store.open()
        puts = await store.put_files([meta("/x/caf\udce9", content="new"), meta("/x/plain", content="new")], at(1))
        for n, (path, old_text) in enumerate((("/x/caf\udce9", "/x/caf\\xe9"), ("/x/plain", "/x/plain"))):
            stale = {**meta(path, content="old").model_dump(), "_id": f"{n:024}", "rev": "r0"}
            stale["filepath"] = old_text  # as the old server wrote it: no flag
            del stale["filepath_escaped"]
            await store._db["files"].insert_one({**stale, "created_at": T0, "updated_at": T0})
        await store._db["markers"].delete_many({})  # as if this replica's migration were under way
        await store.close()
        store = MongoStore(_with_database(mongodb_url, name), timeout=10.0)
        await store.open()
        assert sorted(await current(store), key=lambda r: r.id) == sorted((p.file for p in puts), key=lambda r: r.id)
        for n, (path, escaped) in enumerate((("/x/caf\\xe9", True), ("/x/plain", False))):
            (old,) = await store.history("node-1", path, 10, None, escaped=escaped)
            assert (old.file.id, old.file.meta.sha256, old.event) == (f"{n:024}", sha("old"), "replaced")

        # Written without the flag after the migration (a replica of the previous version during a
        # rolling upgrade): read as the plain name it is, neither hidden nor duplicated.
        late = {**meta("/x/late").model_dump(exclude={"filepath_escaped"}), "_id": "late", "rev": "r0"}
        await store._db["files"].insert_one({**late, "created_at": T0, "updated_at": T0})
        assert [r.id for r in await current(store, path_prefix="/x/late")] == ["late"]
        (again,) = await store.put_files([meta("/x/late", content="changed")], at(2))
        assert again.file.id == "late" and len(await current(store)) == 3
        assert await store.delete_file("node-1", "/x/late", at(3)) is True
        assert [h.event for h in await store.history("node-1", "/x/late", 10, None)] == ["deleted", "replaced"]
    finally:
        await store.close()
        import pymongo

        with pymongo.MongoClient(mongodb_url, serverSelectionTimeoutMS=5000) as client:
            client.drop_database(name)


async def test_a_database_of_a_newer_schema_is_refused(tmp_path: Path, anyio_backend: str) -> None:
    with sqlite3.connect(tmp_path / "newer.db") as db:
        db.executescript(_V0_SQLITE + "PRAGMA user_version = 99;")
    store = SqliteStore(tmp_path / "newer.db")
    with pytest.raises(SchemaTooNew, match=f"schema version 99, newer than this server's {schema.VERSION}"):
        await store.open()
    await store.close()


# -- stats -------------------------------------------------------------------------------------


async def test_stats(store: MetadataStore) -> None:
    stats = await store.stats()
    assert (stats.files, stats.hosts, stats.contents_stored, stats.stored_bytes, stats.logical_bytes) == (0, 0, 0, 0, 0)

    await store.put_files(
        [
            meta("/s/a", content="A", size=10),
            meta("/s/b", content="A", size=10),
            meta("/s/c", content="C", size=5),
            meta("/s/a", host="node-2", content="A", size=10),
            meta("/s/big", host="node-3", content="B", size=2**40),
        ],
        T0,
    )
    await store.put_files([meta("/s/c", content="C2", size=7)], at(1))  # replaces /s/c
    await store.mark_stored(sha("A"), 10, None, "a", at(2))
    await store.mark_stored(sha("A"), 10, None, "a", at(3))  # twice: counted once
    await store.mark_stored(sha("B"), 2**40, None, "b", at(3))

    stats = await store.stats()
    assert stats.files == 5
    assert stats.hosts == 3
    assert stats.logical_bytes == 10 + 10 + 7 + 10 + 2**40
    assert stats.contents_stored == 2
    assert stats.stored_bytes == 10 + 2**40

    await store.delete_file("node-3", "/s/big", at(4))
    stats = await store.stats()
    assert (stats.files, stats.hosts, stats.logical_bytes) == (4, 2, 37)


async def test_visibility_of_a_restricted_key(store: MetadataStore) -> None:
    """Hosts by exact name, paths by whole components, in list_files, visible_shas and stats."""
    await store.put_files(
        [
            meta("/var/log/a", host="node-a", content="A", size=1),
            meta("/var/log", host="node-a", content="L", size=2),  # the prefix itself
            meta("/var/logs/x", host="node-a", content="X", size=4),  # not under /var/log
            meta("/etc/passwd", host="node-a", content="P", size=8),
            meta("/var/log/b", host="node-b", content="A", size=1),  # A on both hosts
            meta("/var/log/c", host="node-b", content="C", size=16),
            meta("/var/log/d", host="node-a1", content="D", size=32),  # not node-a
        ],
        T0,
    )
    for content, size in (("A", 1), ("X", 4), ("C", 16)):
        await store.mark_stored(sha(content), size, None, content, at(1))
    mine = Visibility(("node-a",), ("/var/log",))
    rows = await current(store, visible=mine)
    assert [(r.meta.hostname, r.meta.filepath) for r in rows] == [("node-a", "/var/log/a"), ("node-a", "/var/log")]
    assert [r.meta.filepath for r in await current(store, path_prefix="/var/log/", visible=mine)] == ["/var/log/a"]
    assert await current(store, host="node-b", visible=mine) == []
    assert {r.meta.filepath for r in await current(store, visible=Visibility(None, ("/var/log",)))} == {
        "/var/log/a",
        "/var/log",
        "/var/log/b",
        "/var/log/c",
        "/var/log/d",
    }
    assert len(await current(store, visible=Visibility(("node-b", "node-a1"), None))) == 3
    assert len(await current(store, visible=Visibility(None, ("/",)))) == 7

    shas = {sha(c) for c in "ALXPCD"} | {sha("never")}
    assert await store.visible_shas(shas, mine) == {sha("A"), sha("L")}
    assert await store.visible_shas(shas, Visibility(("node-b",), None)) == {sha("A"), sha("C")}
    assert await store.visible_shas(set(), mine) == set()

    stats = await store.stats(mine)
    assert (stats.files, stats.hosts, stats.logical_bytes) == (2, 1, 3)
    assert (stats.contents_stored, stats.stored_bytes) == (1, 1)  # A is stored, L is not
    stats = await store.stats(Visibility(("node-a", "node-b"), None))
    assert (stats.files, stats.hosts, stats.contents_stored, stats.stored_bytes) == (6, 2, 3, 21)
    assert await store.stats(Visibility(("nowhere",), None)) == await store.stats(Visibility(None, ("/nothing",)))
    assert (await store.stats(Visibility(("nowhere",), None))).files == 0


async def test_key_usage_counts_what_each_key_stored_first(store: MetadataStore) -> None:
    k1, k2 = "1" * 24, "2" * 24
    await store.put_files([meta("/u/a", content="a", size=10), meta("/u/b", content="b", size=20)], T0)
    first = await store.mark_stored(sha("a"), 10, None, "a", at(1), stored_by=k1)
    assert first.stored_by == k1
    again = await store.mark_stored(sha("a"), 10, None, "a", at(2), stored_by=k2)  # already stored: k1 keeps it
    assert again.stored_by == k1
    await store.mark_stored_many(
        [StoredContent(sha("b"), 20, None, "b", k2), StoredContent(sha("c"), 40, None, "c", k2)], at(3)
    )
    await store.mark_stored_many([StoredContent(sha("c"), 40, None, "c", k1)], at(4))  # k2 keeps c
    await store.mark_stored(sha("d"), 80, None, "d", at(5))  # by no key (the maintenance tools)
    assert await store.key_usage([k1, k2, "3" * 24]) == {k1: KeyUsage(1, 10), k2: KeyUsage(2, 60)}
    assert await store.key_usage([k2]) == {k2: KeyUsage(2, 60)}
    assert await store.key_usage([]) == {}
    # Garbage collection's delete and restore keep who stored a content.
    row = await store.get_content(sha("c"))
    assert row is not None and row.stored_by == k2
    assert await store.delete_contents_if_unchanged([row]) == {sha("c")}
    assert await store.key_usage([k2]) == {k2: KeyUsage(1, 20)}  # a deleted content counts no more
    await store.restore_contents([row])
    assert await store.get_content(sha("c")) == row


# What an API key and a content looked like in each backend before restrictions and quotas.
_OLD_SQLITE = """
CREATE TABLE contents (
    sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, stored INTEGER NOT NULL DEFAULT 0,
    first_seen_at REAL NOT NULL, stored_at REAL, mime_type TEXT, storage_path TEXT) WITHOUT ROWID;
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT, key_hash TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL, scopes TEXT NOT NULL, rate_limit REAL, rate_limit_burst INTEGER,
    created_at REAL NOT NULL, expires_at REAL, is_active INTEGER NOT NULL, revoked_at REAL,
    last_used_at REAL);
INSERT INTO api_keys VALUES ('0000000000000000000000aa', 'old', NULL, 'h', 'pp_old', 'read,write',
    NULL, NULL, 1772600767.123, NULL, 1, NULL, NULL);
INSERT INTO contents VALUES ('{sha}', 3, 1, 1772600767.123, 1772600767.123, NULL, 'p');
"""


async def test_rows_stored_before_restrictions_and_quotas_still_work(
    make_store: Callable[[], MetadataStore],
) -> None:
    """An existing database is opened as it is: its keys unrestricted and without quotas, its
    contents stored by no key; new ones beside them get the new fields."""
    store = make_store()
    old = "0000000000000000000000aa"
    if isinstance(store, SqliteStore):
        import sqlite3

        with sqlite3.connect(store._path) as conn:
            conn.executescript(_OLD_SQLITE.format(sha=sha("old")))
        await store.open()
    else:
        await store.open()
        assert isinstance(store, MongoStore)
        await store._keys.insert_one(
            {"_id": old, "name": "old", "key_hash": "h", "key_prefix": "pp_old", "scopes": ["read", "write"],
             "created_at": T0, "is_active": True}
        )  # fmt: skip
        await store._contents.insert_one(
            {"_id": sha("old"), "size": 3, "stored": True, "first_seen_at": T0, "stored_at": T0, "storage_path": "p"}
        )
    try:
        row = await store.get_key(old)
        assert row is not None and row.scopes == ("read", "write")
        assert (row.hostnames, row.path_prefixes, row.max_bytes, row.max_files) == (None, None, None, None)
        content = await store.get_content(sha("old"))
        assert content is not None and content.stored and content.stored_by is None
        assert await store.key_usage([old]) == {}
        new = key(7, hostnames=("n",), max_files=1)
        await store.insert_key(new)
        assert await store.list_keys() == [new, row]  # by id
        await store.mark_stored(sha("new"), 5, None, "q", T0, stored_by=old)
        assert await store.key_usage([old]) == {old: KeyUsage(1, 5)}
    finally:
        await store.close()
    if isinstance(store, SqliteStore):  # opened again: the added columns are not added twice
        again = SqliteStore(store._path)
        await again.open()
        assert (await again.get_key(new.id)) == new
        await again.close()


# -- keys --------------------------------------------------------------------------------------


def key(n: int, **kw: object) -> KeyRow:
    fields: dict = dict(
        id=f"{n:024x}",
        name=f"key-{n}",
        key_hash=sha(f"secret-{n}"),
        key_prefix=f"pp_{n}",
        scopes=("read", "write"),
        created_at=at(n),
    )
    return KeyRow(**{**fields, **kw})


async def test_keys(store: MetadataStore) -> None:
    plain = key(1)
    full = key(
        2,
        description="ci",
        scopes=("admin",),
        rate_limit=2.5,
        rate_limit_burst=5,
        expires_at=at(3600),
        last_used_at=at(3),
        hostnames=("node-a", "node, b"),
        path_prefixes=("/var/log", "/"),
        max_bytes=2**40,
        max_files=5,
    )
    await store.insert_key(full)
    await store.insert_key(plain)

    assert await store.get_key(plain.id) == plain
    assert await store.get_key(full.id) == full
    assert await store.key_by_hash(full.key_hash) == full
    assert await store.key_by_hash(sha("unknown")) is None
    assert await store.get_key("0" * 24) is None
    assert await store.list_keys() == [plain, full]  # ordered by id

    # A duplicate key is the caller's bug: it must surface, not look like an outage.
    with pytest.raises(Exception) as caught:
        await store.insert_key(key(3, key_hash=plain.key_hash))
    assert not isinstance(caught.value, BackendUnavailable)

    assert await store.revoke_key(plain.id, at(100)) is True
    revoked = await store.get_key(plain.id)
    assert revoked is not None and revoked.is_active is False and revoked.revoked_at == at(100)
    assert await store.revoke_key(plain.id, at(200)) is True  # idempotent
    assert (await store.get_key(plain.id)).revoked_at == at(100)  # type: ignore[union-attr]
    assert await store.revoke_key("f" * 24, at(200)) is False
    assert (await store.get_key(full.id)).is_active is True  # type: ignore[union-attr]

    assert await store.delete_key(plain.id) is True
    assert await store.delete_key(plain.id) is False
    assert await store.get_key(plain.id) is None
    assert await store.key_by_hash(plain.key_hash) is None
    assert await store.list_keys() == [full]


async def test_touch_keys_only_moves_forward(store: MetadataStore) -> None:
    k1, k2 = key(1), key(2, key_hash=sha("other"), last_used_at=at(50))
    await store.insert_key(k1)
    await store.insert_key(k2)
    await store.touch_keys({})
    await store.touch_keys({k1.id: at(20), k2.id: at(10), "0" * 24: at(30)})
    assert (await store.get_key(k1.id)).last_used_at == at(20)  # type: ignore[union-attr]
    assert (await store.get_key(k2.id)).last_used_at == at(50)  # type: ignore[union-attr]
    await store.touch_keys({k1.id: at(15)})
    assert (await store.get_key(k1.id)).last_used_at == at(20)  # type: ignore[union-attr]
    await store.touch_keys({k1.id: at(25), k2.id: at(60)})
    assert (await store.get_key(k1.id)).last_used_at == at(25)  # type: ignore[union-attr]
    assert (await store.get_key(k2.id)).last_used_at == at(60)  # type: ignore[union-attr]
    assert await store.get_key("0" * 24) is None  # touching an unknown key creates nothing


async def test_claim_once(store: MetadataStore) -> None:
    assert await store.claim("bootstrap-admin", T0) is True
    assert await store.claim("bootstrap-admin", at(1)) is False
    assert await store.claim("other", at(1)) is True
    results = await asyncio.gather(*(store.claim("raced", T0) for _ in range(20)))
    assert results.count(True) == 1


# -- rate limits -------------------------------------------------------------------------------


async def test_take_tokens_burst_refusal_and_refill(store: MetadataStore) -> None:
    rate, burst = 10.0, 5  # one token per 0.1 s, 5 at most
    assert (await store.take_tokens("b", rate, burst, 3, 1000.0)).granted == 3
    assert (await store.take_tokens("b", rate, burst, 3, 1000.0)).granted == 2  # what is left
    refused = await store.take_tokens("b", rate, burst, 1, 1000.0)
    assert refused.granted == 0 and refused.retry_after == pytest.approx(0.1)
    refused = await store.take_tokens("b", rate, burst, 1, 1000.05)  # a refusal consumes nothing
    assert refused.granted == 0 and refused.retry_after == pytest.approx(0.05)
    assert (await store.take_tokens("b", rate, burst, 1, 1000.1)).granted == 1
    assert (await store.take_tokens("b", rate, burst, 5, 1000.3)).granted == 2  # refilled 0.2 s worth
    assert (await store.take_tokens("b", rate, burst, 10, 1100.0)).granted == 5  # never more than burst
    # Buckets are independent.
    assert (await store.take_tokens("other", rate, burst, 5, 1000.0)).granted == 5


async def test_take_tokens_slow_refill(store: MetadataStore) -> None:
    rate = 1 / 60  # one token a minute
    assert (await store.take_tokens("slow", rate, 1, 1, 0.0)).granted == 1
    refused = await store.take_tokens("slow", rate, 1, 1, 1.0)
    assert refused.granted == 0 and refused.retry_after == pytest.approx(59.0)
    assert (await store.take_tokens("slow", rate, 1, 1, 59.0)).granted == 0
    assert (await store.take_tokens("slow", rate, 1, 1, 60.0)).granted == 1


async def test_take_tokens_concurrently_never_over_grants(store: MetadataStore) -> None:
    grants = await asyncio.gather(*(store.take_tokens("hot", 0.001, 50, 1, 5000.0) for _ in range(200)))
    assert sum(g.granted for g in grants) == 50
    assert sorted(g.granted for g in grants) == [0] * 150 + [1] * 50
    assert all(g.retry_after > 0 for g in grants if g.granted == 0)
    assert (await store.take_tokens("hot", 0.001, 50, 1, 5000.0)).granted == 0


# -- integrity: what verify and gc read and delete ------------------------------------------


async def test_iter_contents_in_sha_order_and_batches(store: MetadataStore) -> None:
    await store.put_files([meta(f"/ic/{i}", content=f"ic{i}") for i in range(23)], T0)
    await store.mark_stored(sha("ic5"), 100, None, "p", at(1))
    batches = [b async for b in store.iter_contents(batch=5)]
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    rows = [r for b in batches for r in b]
    assert [r.sha256 for r in rows] == sorted(sha(f"ic{i}") for i in range(23))
    found = await store.contents([r.sha256 for r in rows])
    assert rows == [found[r.sha256] for r in rows] and rows[0] != rows[1]
    assert next(r for r in rows if r.sha256 == sha("ic5")).stored is True
    assert [b async for b in store.iter_contents(batch=100)] == [rows]


async def test_referenced_by_current_and_historical_records(store: MetadataStore) -> None:
    await store.put_files([meta("/r/a", content="old"), meta("/r/b", content="shared")], T0)
    await store.put_files([meta("/r/a", content="new"), meta("/r/c", content="shared")], at(1))  # "old" -> history
    await store.put_files([meta("/r/gone", content="deleted")], at(2))
    await store.delete_file("node-1", "/r/gone", at(3))  # "deleted" -> history only
    await store.mark_stored(sha("unreferenced"), 1, None, "u", at(4))
    named = sorted(sha(c) for c in ("old", "new", "shared", "deleted"))
    for batch in (1, 2, 3, 1000):
        pages = [p async for p in store.iter_referenced(batch=batch)]
        assert all(0 < len(p) <= batch for p in pages)
        assert [s for p in pages for s in p] == named, batch
    assert await store.referenced([sha(c) for c in ("old", "shared", "unreferenced", "never")]) == {
        sha("old"),
        sha("shared"),
    }
    assert await store.referenced([]) == set()


async def test_iter_referenced_with_many_records_of_one_content(store: MetadataStore) -> None:
    await store.put_files([meta(f"/same/{i}", content="same") for i in range(12)], T0)
    await store.put_files([meta("/z", content="zzz"), meta("/a", content="aaa")], T0)
    pages = [p async for p in store.iter_referenced(batch=4)]
    assert [s for p in pages for s in p] == sorted(sha(c) for c in ("same", "zzz", "aaa"))


async def test_delete_contents_only_if_unchanged_then_restore(store: MetadataStore) -> None:
    await store.put_files([meta("/del/a", content="a"), meta("/del/b", content="b"), meta("/del/c", content="c")], T0)
    await store.mark_stored(sha("a"), 100, "text/plain", "pa", at(1))
    seen = await store.contents([sha("a"), sha("b"), sha("c")])
    await store.mark_stored(sha("b"), 100, None, "pb", at(2))  # changed since gc read it: kept
    deleted = await store.delete_contents_if_unchanged(list(seen.values()))
    assert deleted == {sha("a"), sha("c")}
    assert set(await store.contents(seen)) == {sha("b")}
    assert await store.delete_contents_if_unchanged([seen[sha("a")]]) == {sha("a")}  # already gone: not recorded

    (recreated,) = await store.put_files([meta("/del/c2", content="c")], at(3))  # recreated meanwhile
    await store.restore_contents([seen[sha("a")], seen[sha("c")]])
    assert await store.get_content(sha("a")) == seen[sha("a")]
    assert await store.get_content(sha("c")) == recreated.content  # the newer record is kept


# -- lifecycle and failures --------------------------------------------------------------------


async def test_open_is_idempotent_and_data_persists(
    make_store: Callable[[], MetadataStore], store: MetadataStore
) -> None:
    (put,) = await store.put_files([meta("/keep")], T0)
    other = make_store()
    await other.open()
    await other.open()
    try:
        await other.ping()
        assert await other.list_files(FileQuery()) == [put.file]
    finally:
        await other.close()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_mongodb_unreachable_is_backend_unavailable(anyio_backend: str) -> None:
    store = MongoStore(f"mongodb://127.0.0.1:{_closed_port()}/putplace", timeout=0.3)
    try:
        for call in (
            store.ping(),
            store.open(),
            store.put_files([meta("/x")], T0),
            store.take_tokens("b", 1.0, 1, 1, 0.0),
        ):
            with pytest.raises(BackendUnavailable) as caught:
                await call
            assert caught.value.backend == "database" and caught.value.status_code == 503
            assert caught.value.detail.startswith("database unavailable:")
    finally:
        await store.close()


async def test_upload_sessions(store: MetadataStore) -> None:
    sessions: SessionStore = store  # type: ignore[assignment]  # both backends implement it
    rows = [
        SessionRow(uuid.uuid4().hex, "ab" * 32, 10 * 2**30, 8 * 2**20, "key1", ref, T0, T0 + timedelta(hours=h))
        for h, ref in ((3, ""), (1, "s3-upload-id"), (2, ""))
    ]
    for row in rows:
        await sessions.insert_session(row)
    assert await sessions.get_session(rows[1].id) == rows[1]
    assert await sessions.get_session("0" * 32) is None
    assert await sessions.expired_sessions(T0 + timedelta(hours=2, minutes=30), 10) == [rows[1], rows[2]]
    assert await sessions.expired_sessions(T0 + timedelta(hours=5), 1) == [rows[1]]  # oldest expiry first
    await sessions.touch_session(rows[1].id, T0 + timedelta(hours=4))
    await sessions.touch_session(rows[1].id, T0)  # never earlier
    assert (await sessions.get_session(rows[1].id)) == replace(rows[1], expires_at=T0 + timedelta(hours=4))
    assert await sessions.delete_session(rows[1].id) is True
    assert await sessions.delete_session(rows[1].id) is False
    assert await sessions.expired_sessions(T0 + timedelta(hours=5), 10) == [rows[2], rows[0]]
