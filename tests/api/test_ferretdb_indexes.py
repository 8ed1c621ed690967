"""``docs/ferretdb-postgresql-indexes.sql``, as an operator runs it, on a real FerretDB v1 on
PostgreSQL: afterwards the MongoDB store's lookups are pushed down *and* answered by an index
(without it PostgreSQL scans the table: bench/ferretdb_growth.py), the indexes keep no pending
list and new connections plan each lookup for its values; it can be run again; a wrong
database name is one readable error."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from putplace_api.store.mongo import MongoStore
from tests.api.test_store_contract import anyio_backend, meta
from tests.servers import ferretdb
from tests.servers.base import Server, workdir

__all__ = ["anyio_backend"]

pytestmark = pytest.mark.anyio

RECORDS = 3_000  # enough rows that PostgreSQL's planner prefers an index to a scan


@pytest.fixture(scope="module")
def on_postgresql() -> Iterator[Server]:
    ferretdb.install()
    with workdir("ferretdb-pg") as data:
        server = ferretdb.start(data, backend="postgresql")
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
async def store(on_postgresql: Server, anyio_backend: str) -> AsyncIterator[MongoStore]:
    s = MongoStore(on_postgresql.env[ferretdb.ENV_URL].rstrip("/") + "/putplace_gin", timeout=60.0)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def _plan(store: MongoStore, collection: str, query: dict[str, Any]) -> tuple[bool, str]:
    answer = await store._db.command("explain", {"find": collection, "filter": query})
    plan = answer["queryPlanner"]["Plan"]
    node = plan["Plans"][0] if plan["Node Type"] == "Gather" else plan
    return bool(answer.get("filterPushdown")), str(node["Node Type"])


def _sql(server: Server, query: str) -> str:
    """One query by psql, on a new connection to FerretDB's PostgreSQL database."""
    done = ferretdb.psql(server, "-qAt", "-c", query)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_the_indexes_answer_the_stores_lookups(on_postgresql: Server, store: MongoStore) -> None:
    now = datetime.now(UTC)
    for first in range(0, RECORDS, 1000):
        await store.put_files([meta(f"/gin/{n}") for n in range(first, first + 1000)], now)  # a content each
    probe = meta("/gin/7")
    lookups: list[tuple[str, dict[str, Any]]] = [
        ("contents", {"_id": probe.sha256}),
        ("files", {"hostname": probe.hostname, "filepath": probe.filepath}),
        ("files", {"sha256": probe.sha256}),
    ]
    for collection, query in lookups:
        assert await _plan(store, collection, query) == (True, "Seq Scan")  # FerretDB's own indexes: a scan

    done = ferretdb.add_putplace_indexes(on_postgresql, "putplace_gin")
    assert done.returncode == 0, done.stderr
    assert "PutPlace GIN indexes in schema putplace_gin: 8 in place" in done.stderr
    for collection, query in lookups:
        pushed, node = await _plan(store, collection, query)
        assert pushed and node in ("Bitmap Heap Scan", "Index Scan"), (collection, query, node)

    # The two settings that keep them in use while the catalogue grows (the script says why):
    # no pending list, and plans made for each lookup's values on every new connection.
    options = _sql(on_postgresql, "SELECT c.reloptions FROM pg_class c WHERE c.relname LIKE '%putplace_gin'")
    assert options.splitlines() == ["{fastupdate=off}"] * 8, options
    assert _sql(on_postgresql, "SHOW plan_cache_mode") == "force_custom_plan"

    again = ferretdb.add_putplace_indexes(on_postgresql, "putplace_gin")
    assert again.returncode == 0 and "8 in place" in again.stderr, again.stderr
    ferretdb.restart(on_postgresql)  # as the script asks, for the plan setting
    # the store reads through them as before, on FerretDB's new connections
    assert (await store.get_content(probe.sha256)) is not None
    [result] = await store.put_files([probe], now)
    assert result.file.meta == probe


def test_a_database_that_is_not_there_is_one_readable_error(on_postgresql: Server) -> None:
    done = ferretdb.add_putplace_indexes(on_postgresql, "no_such_db")
    assert done.returncode != 0
    assert 'no schema "no_such_db": is no_such_db the database of PUTPLACE_DATABASE_URL' in done.stderr
