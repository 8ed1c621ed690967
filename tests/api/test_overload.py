"""Overload: at its cap of concurrent database operations (``PUTPLACE_DATABASE_MAX_CONCURRENCY``)
an API process answers 503 + Retry-After at once, a refused request changes nothing, and a
client that retries after Retry-After gets everything through.

The cap is held deterministically: either by taking the limiter's every slot on the server's
own event loop (both backend pairs), or by a real write that SQLite keeps waiting on a lock the
test holds."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
import httpx
import pytest

from putplace_agent.retry import call_with_retry
from putplace_api import metrics
from putplace_client import PutPlaceClient, ServerUnavailable
from putplace_client.models import FileMetadata
from tests.api.conftest import Api, meta
from tests.overload import write_holding_the_only_slot
from tests.waiting import wait_until

CAP = 2


def _limiter(api: Api) -> anyio.CapacityLimiter:
    assert api.served is not None
    limiter: anyio.CapacityLimiter = api.served.app.state.putplace.store.limiter
    return limiter


@contextmanager
def cap_reached(api: Api) -> Iterator[None]:
    """Every slot of the process's limiter taken, as that many slow database calls would."""
    assert api.served is not None
    limiter = _limiter(api)
    tokens = [object() for _ in range(int(limiter.total_tokens))]
    api.served.call(lambda: [limiter.acquire_on_behalf_of_nowait(t) for t in tokens])
    try:
        yield
    finally:
        api.served.call(lambda: [limiter.release_on_behalf_of(t) for t in tokens])


def _shed(operation: str) -> float:
    value: float = metrics.SHED.labels("database", operation)._value.get()
    return value


def _assert_shed(r: httpx.Response, retry_after: int) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == str(retry_after)
    assert "busy" in r.json()["detail"]


def test_cap_reached_sheds_with_retry_after_and_loses_nothing(backend_api: Api) -> None:
    api = backend_api
    retry = api.settings.retry_after_seconds
    first, second = b"kept\n", b"refused first\n"
    with api.http() as c:
        assert c.post("/put_file", json=meta(first, filepath="/a")).status_code == 201
        before = c.get("/stats").json()
        shed_before = _shed("put_files")
        with cap_reached(api):
            _assert_shed(c.post("/put_file", json=meta(second, filepath="/b")), retry)
            _assert_shed(c.post("/put_file", json=meta(first, filepath="/a", file_size=99)), retry)
            _assert_shed(c.get("/files", params={"hostname": "node-1"}), retry)
            _assert_shed(c.post(f"/upload_file/{meta(first)['sha256']}", content=first), retry)
            # Health is not counted against the cap: it still says whether the backends answer.
            assert c.get("/readyz").json() == {"status": "ready", "database": True, "storage": True}
            assert c.get("/health").json()["status"] == "healthy"
        # The refused requests did nothing: the stats and the one record are as they were.
        assert c.get("/stats").json() == before
        files = c.get("/files", params={"hostname": "node-1"}).json()["items"]
        assert [(f["filepath"], f["file_size"], f["sha256"]) for f in files] == [
            ("/a", len(first), meta(first)["sha256"])
        ]
        # Sent again once the load is gone, they all go through.
        assert c.post("/put_file", json=meta(second, filepath="/b")).status_code == 201
        for data in (first, second):
            up = c.post(f"/upload_file/{meta(data)['sha256']}", content=data)
            assert up.status_code == 200, up.text
            assert c.get(f"/content/{meta(data)['sha256']}").content == data
        assert c.get("/stats").json()["files"] == before["files"] + 1
    # Counted by operation; the keyed requests may be refused at the key lookup instead.
    assert _shed("put_files") + _shed("key_by_hash") > shed_before


def test_the_clients_retry_honours_retry_after_and_gets_through(start_api: Callable[..., Api]) -> None:
    api = start_api(database_max_concurrency=CAP, retry_after_seconds=1)
    record = FileMetadata.model_validate(meta(b"retried\n", filepath="/retried"))
    shed_before = _shed("put_files") + _shed("key_by_hash")

    async def retried() -> bool:
        async with PutPlaceClient(api.url, api.admin_key) as client:
            with pytest.raises(ServerUnavailable) as refused:
                await client.put_file(record)
            assert refused.value.retry_after == api.settings.retry_after_seconds
            # The agent's retry (tenacity, never sooner than Retry-After) then gets it through
            # once the cap is free again.
            return (await call_with_retry(60, lambda: client.put_file(record))).upload_required

    with cap_reached(api):
        outcome: list[bool] = []
        runner = threading.Thread(target=lambda: outcome.append(asyncio.run(retried())))
        runner.start()
        wait_until(lambda: _shed("put_files") + _shed("key_by_hash") >= shed_before + 2, 30, "two refusals")
    runner.join(timeout=60)
    assert outcome == [True]
    with api.http() as c:
        assert [f["filepath"] for f in c.get("/files", params={"hostname": "node-1"}).json()["items"]] == ["/retried"]


def test_a_write_waiting_on_the_database_holds_a_slot(start_api: Callable[..., Api]) -> None:
    """A real slow operation: SQLite waits (busy timeout) for a lock the test holds."""
    api = start_api(database_max_concurrency=1, database_timeout_seconds=60)
    retry = api.settings.retry_after_seconds
    with api.http() as c:
        assert c.post("/put_file", json=meta(b"warm\n", filepath="/warm")).status_code == 201
    slow = meta(b"slow\n", filepath="/slow")
    with write_holding_the_only_slot(api.settings.data_dir / "putplace.db", api.http, slow) as answers:
        with api.http() as c:
            _assert_shed(c.post("/put_file", json=meta(b"shed\n", filepath="/shed")), retry)
    assert answers[-1].status_code == 201 and all(r.status_code == 503 for r in answers[:-1])
    with api.http() as c:
        paths = {f["filepath"] for f in c.get("/files", params={"hostname": "node-1"}).json()["items"]}
        assert paths == {"/warm", "/slow"}
        assert c.post("/put_file", json=meta(b"shed\n", filepath="/shed")).status_code == 201
