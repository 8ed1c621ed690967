"""The queries the MongoDB store sends for a write, as FerretDB v1 needs them.

FerretDB v1 answers a read by scanning the collection (an equality is pushed down to its
database, which still scans; an ``$in`` or ``$or`` is not pushed down at all): only an insert
meets an index. So a write's reads must be equalities, and a new content must cost no read of
``contents`` (``MongoStore._ensure_contents`` inserts first). ``bench/ferretdb_growth.py``
measures what that is worth as the collections grow.

The commands are seen by a pymongo command listener, registered once for this process and
filtered to each test's own database. MongoDB only: the SQLite store has real indexes.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pymongo import monitoring

from putplace_api.store.mongo import MongoStore
from tests.api.test_store_contract import T0, _with_database, anyio_backend, at, meta, sha

__all__ = ["anyio_backend"]

pytestmark = pytest.mark.anyio


class _Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.seen: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self._lock:
            if event.database_name in self.seen:
                self.seen[event.database_name].append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


_COMMANDS = _Commands()
monitoring.register(_COMMANDS)  # before any client of these tests is made: clients copy the list


@pytest.fixture
def database(mongodb_url: str) -> Iterator[str]:
    name = f"queries_{uuid.uuid4().hex[:20]}"
    _COMMANDS.seen[name] = []
    yield name
    del _COMMANDS.seen[name]
    import pymongo

    with pymongo.MongoClient(mongodb_url, serverSelectionTimeoutMS=5000) as client:
        client.drop_database(name)


@pytest.fixture
async def store(mongodb_url: str, database: str, anyio_backend: str) -> AsyncIterator[MongoStore]:
    s = MongoStore(_with_database(mongodb_url, database), timeout=10.0)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def _forget(database: str) -> None:
    _COMMANDS.seen[database] = []


def _reads(database: str, collection: str) -> list[dict[str, Any]]:
    """The filters of the reads of ``collection`` since ``_forget`` (an update reads too)."""
    filters: list[dict[str, Any]] = []
    for command in _COMMANDS.seen[database]:
        if command.get("find") == collection:
            filters.append(command.get("filter", {}))
        elif command.get("findAndModify") == collection:
            filters.append(command.get("query", {}))
        elif command.get("update") == collection or command.get("delete") == collection:
            filters.extend(u["q"] for u in command.get("updates", command.get("deletes", [])))
    return filters


def _equalities(query: dict[str, Any]) -> bool:
    """Whether a filter is all equalities on plain values: what FerretDB pushes down (a null
    is not, but then the filter's other equalities are)."""
    return all(not k.startswith("$") and not isinstance(v, dict | list) for k, v in query.items())


async def test_new_contents_cost_no_read_of_the_contents(store: MongoStore, database: str) -> None:
    assert store._in_reads_all  # the tests' server is FerretDB: its lookup rules are in force
    _forget(database)
    batch = [meta(f"/q/new-{i}", content=f"new {i}") for i in range(20)]  # more than one $in's worth
    results = await store.put_files(batch, T0)
    assert [r.content.stored for r in results] == [False] * 20
    assert _reads(database, "contents") == []


async def test_known_contents_are_read_by_equality_on_their_id(store: MongoStore, database: str) -> None:
    await store.put_files([meta("/q/known", content="known")], T0)
    await store.mark_stored(sha("stored"), 100, None, "s", at(1))
    _forget(database)
    batch = [meta("/q/a", content="known"), meta("/q/b", content="stored"), meta("/q/c", content="fresh")]
    results = await store.put_files(batch, at(2))
    assert [r.content.stored for r in results] == [False, True, False]
    # One equality per known content, none for the new one.
    assert sorted(q["_id"] for q in _reads(database, "contents")) == sorted([sha("known"), sha("stored")])


async def test_every_read_of_a_write_is_an_equality(store: MongoStore, database: str) -> None:
    """New paths, a changed path, a re-announced path, then the upload's content calls."""
    _forget(database)
    await store.put_files([meta(f"/q/p{i}") for i in range(20)], T0)
    changed = [meta(f"/q/p{i}", content=f"v2 {i}") for i in range(20)]
    await store.put_files([*changed, meta("/q/p-new")], at(1))
    await store.get_content(changed[0].sha256)
    await store.mark_stored(changed[0].sha256, 100, None, "x", at(2))
    reads = {c: _reads(database, c) for c in ("files", "file_history", "contents")}
    assert reads["files"] and reads["contents"]  # (the listener saw them)
    assert [q for queries in reads.values() for q in queries if not _equalities(q)] == []
