"""How the MongoDB store's write calls slow as the collections grow, on FerretDB v1 + PostgreSQL.

FerretDB v1 pushes an equality filter on a string down to PostgreSQL as
``_jsonb->'field' @> '"value"'``, which its btree indexes (``(_jsonb->'field')``) cannot answer:
every such read is a sequential scan of the table, in PostgreSQL. An ``$in`` or ``$or`` is not
pushed down at all (the whole collection goes to FerretDB). Only inserts meet an index (the
unique ones). So a call costs what it *reads*, times the collection's size.

The store is driven directly (no HTTP), on FerretDB's PostgreSQL backend as ``bench/soak.py``
runs it. The collections are grown in steps (``--steps``, records and contents added by batches
of 1,000 new paths and new contents); at each size, ``--calls`` calls of each kind are timed and
their median reported:

* ``new``: ``put_files`` of one new path with a new content (the soak's usual write);
* ``replace``: ``put_files`` of an existing path with a new content;
* ``dedup``: ``put_files`` of a new path naming a content already stored;
* ``get_content``, ``mark_stored``: the upload's two content calls.

Baseline in the same run: each kind at the first size; ``growth`` = median at a size / at the
first. A call that stays indexed keeps a growth near 1; a scan grows with the size. Also the
``explain`` of the lookups, which says what FerretDB pushed down and PostgreSQL's plan for it.

    .venv/bin/python bench/ferretdb_growth.py [--steps 0,10000,20000,40000] [--calls 30] [--ferretdb-indexes]

``--ferretdb-indexes`` runs ``docs/ferretdb-postgresql-indexes.sql`` on the empty collections
first, and restarts FerretDB as the script asks.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import machine_busy_seconds, machine_line, print_table  # noqa: E402
from putplace_api.store.mongo import MongoStore  # noqa: E402
from putplace_client.models import FileMetadata  # noqa: E402
from tests.servers import ferretdb  # noqa: E402
from tests.servers.base import workdir as scratch  # noqa: E402

HOSTS = [f"node-{i}" for i in range(8)]
DATABASE = "putplace_growth"


def meta(n: int, tag: str, sha: str | None = None) -> FileMetadata:
    now = time.time()
    return FileMetadata(
        filepath=f"/grow/{tag}/d{n % 100}/f{n}.bin",
        hostname=HOSTS[n % len(HOSTS)],
        ip_address="127.0.0.1",
        sha256=sha or hashlib.sha256(f"{tag}:{n}".encode()).hexdigest(),
        file_size=1024 + n % 4096,
        file_mode=0o100644,
        file_uid=1000,
        file_gid=1000,
        file_mtime=now,
        file_atime=now,
        file_ctime=now,
    )


async def grow(store: MongoStore, start: int, end: int) -> None:
    """Records and contents ``start``..``end``, by batches of 1,000: the contents inserted as
    stored (as an upload leaves them), then the records by ``put_files`` with one ``$in`` per
    batch (one full read each on FerretDB, far cheaper here than 1,000 scans)."""
    reads_all = store._in_reads_all
    store._in_reads_all = False
    try:
        for first in range(start, end, 1000):
            batch = [meta(n, "base") for n in range(first, min(end, first + 1000))]
            now = datetime.now(UTC)
            await store._insert_all(  # (a content the size-0 calls announced is there already)
                store._contents,
                [
                    {"_id": m.sha256, "size": m.file_size, "stored": True, "first_seen_at": now, "stored_at": now}
                    | {"storage_path": m.sha256, "mime_type": None, "stored_by": None}
                    for m in batch
                ],
            )
            await store.put_files(batch, now)
    finally:
        store._in_reads_all = reads_all


async def median_ms(calls: int, call: Callable[[int], Awaitable[Any]]) -> float:
    times = []
    for i in range(calls):
        started = time.perf_counter()
        await call(i)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def measure(store: MongoStore, size: int, calls: int, round_: int) -> dict[str, float]:
    now = datetime.now(UTC)
    tag = f"r{round_}"
    base = max(size, 1)
    return {
        "new": await median_ms(calls, lambda i: store.put_files([meta(i, f"{tag}-new")], now)),
        "replace": await median_ms(
            calls, lambda i: store.put_files([meta(i * 7919 % base, "base", meta(i, f"{tag}-rep").sha256)], now)
        ),
        "dedup": await median_ms(
            calls, lambda i: store.put_files([meta(i, f"{tag}-dup", meta(i * 104729 % base, "base").sha256)], now)
        ),
        "get_content": await median_ms(calls, lambda i: store.get_content(meta(i * 31 % base, "base").sha256)),
        "mark_stored": await median_ms(
            calls, lambda i: store.mark_stored(meta(i, f"{tag}-new").sha256, 1024, None, "x", now)
        ),
    }


async def explain(store: MongoStore) -> list[list[object]]:
    probe = meta(1, "base")
    rows: list[list[object]] = []
    for collection, query in [
        ("contents", {"_id": probe.sha256}),
        ("files", {"hostname": probe.hostname, "filepath": probe.filepath}),
        ("contents", {"_id": {"$in": [probe.sha256, meta(2, "base").sha256]}}),
    ]:
        answer = await store._db.command("explain", {"find": collection, "filter": query})
        plan = answer.get("queryPlanner", {}).get("Plan", {})
        node = plan.get("Plans", [plan])[0] if plan.get("Node Type") == "Gather" else plan
        rows.append([collection, json.dumps(query)[:60], answer.get("filterPushdown"), node.get("Node Type")])
    return rows


async def run(args: argparse.Namespace, url: str, prepare: Callable[[], None] | None = None) -> dict[str, Any]:
    store = MongoStore(url, timeout=120)  # the growth's full reads take seconds
    await store.open()
    if prepare is not None:  # once the store has made its collections
        prepare()
    steps = [int(s) for s in args.steps.split(",")]
    results: dict[int, dict[str, float]] = {}
    try:
        grown = 0
        for i, size in enumerate(steps):
            await grow(store, grown, size)
            grown = size
            results[size] = await measure(store, size, args.calls, i)
            print(f"  {size:,} records: " + ", ".join(f"{k} {v:.1f} ms" for k, v in results[size].items()), flush=True)
        plans = await explain(store)
    finally:
        await store.close()
    first = results[steps[0]]
    print_table(
        ["records", *(f"{k} ms" for k in first), *(f"{k} growth" for k in first)],
        [[s, *r.values(), *(r[k] / first[k] for k in first)] for s, r in results.items()],
    )
    print()
    print_table(["collection", "filter", "pushed down", "PostgreSQL plan"], plans)
    return {"steps": {str(s): r for s, r in results.items()}, "explain": plans}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", default="0,10000,20000,40000", help="collection sizes to measure at")
    ap.add_argument("--calls", type=int, default=30, help="timed calls per kind and size")
    ap.add_argument(
        "--ferretdb-indexes",
        action="store_true",
        help="run docs/ferretdb-postgresql-indexes.sql on the empty collections (and restart FerretDB, as it asks)",
    )
    args = ap.parse_args()
    print(machine_line())
    busy = machine_busy_seconds()
    time.sleep(3)
    print(f"other processes before the start: {(machine_busy_seconds() - busy) / 3 * 100:.0f} % of a core")
    ferretdb.install()
    with scratch("ferretdb") as data:
        db = ferretdb.start(data, backend="postgresql")
        busy, started = machine_busy_seconds(), time.monotonic()

        def add_indexes() -> None:
            done = ferretdb.add_putplace_indexes(db, DATABASE)
            if done.returncode != 0:
                raise SystemExit(f"error: the index script failed: {done.stderr.strip()}")
            print(done.stderr.strip(), flush=True)
            ferretdb.restart(db)

        try:
            url = db.env[ferretdb.ENV_URL].rstrip("/") + "/" + DATABASE
            out = asyncio.run(run(args, url, add_indexes if args.ferretdb_indexes else None))
        finally:
            db.stop()
    out["machine_busy_percent"] = (machine_busy_seconds() - busy) / (time.monotonic() - started) * 100
    print(f"machine busy during the run (this benchmark and FerretDB included): {out['machine_busy_percent']:.0f} %")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
