"""Overload: at its cap of concurrent database operations (``PUTPLACE_DATABASE_MAX_CONCURRENCY``)
an API process answers 503 + Retry-After at once -- a request arriving then before its key is
even looked up --, a refused request changes nothing, Retry-After grows with the refusals, and a
client that retries after Retry-After gets everything through.

The cap is held deterministically: either by taking the limiter's every slot on the server's
own event loop (both backend pairs), or by a real write that SQLite keeps waiting on a lock the
test holds."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
import httpx
import pytest

from putplace_agent.retry import call_with_retry
from putplace_api import metrics
from putplace_api.admission import PRESSURE_SECONDS, RetryAfter
from putplace_client import PutPlaceClient, ServerUnavailable
from putplace_client.models import FileMetadata
from tests.api.conftest import Api, meta
from tests.overload import write_holding_the_only_slot
from tests.waiting import wait_until
from tests.webhook_receiver import receiving

CAP = 2


def _limiter(api: Api) -> anyio.CapacityLimiter:
    assert api.served is not None
    limiter: anyio.CapacityLimiter = api.served.app.state.putplace.store.limiter
    return limiter


@contextmanager
def cap_reached(api: Api) -> Iterator[None]:
    """Every slot of the process's limiter taken, as that many slow database calls would."""
    assert api.served is not None
    served, limiter = api.served, _limiter(api)
    tokens = [object() for _ in range(int(limiter.total_tokens))]
    held: list[object] = []

    def take() -> bool:
        # A background task (webhooks, key times, session expiry) may hold a slot a moment.
        while len(held) < len(tokens) and limiter.available_tokens:
            limiter.acquire_on_behalf_of_nowait(tokens[len(held)])
            held.append(tokens[len(held)])
        return len(held) == len(tokens)

    try:
        wait_until(lambda: served.call(take), 30, "every slot of the cap taken")
        yield
    finally:
        served.call(lambda: [limiter.release_on_behalf_of(t) for t in held])


def _shed(operation: str) -> float:
    """Refusals counted under ``operation``: a store method, or the route of a request refused
    on arrival."""
    value: float = metrics.SHED.labels("database", operation)._value.get()
    return value


def _shed_total() -> float:
    return sum(s.value for m in metrics.SHED.collect() for s in m.samples if s.name.endswith("_total"))


def _assert_shed(r: httpx.Response, retry_after: int, *, grown: bool = False) -> None:
    """``grown``: other refusals came just before (their number, not this test, sets how much
    Retry-After has grown past its base: test_retry_after_grows_with_the_refusals_...)."""
    assert r.status_code == 503, r.text
    if grown:
        assert int(r.headers["retry-after"]) >= retry_after
    else:
        assert r.headers["retry-after"] == str(retry_after)
    assert "busy" in r.json()["detail"]


@contextmanager
def clock_stopped(api: Api) -> Iterator[RetryAfter]:
    """The Retry-After of the server's refusals, its clock stopped: no refusal decays."""
    assert api.served is not None
    retry_after: RetryAfter = api.served.app.state.putplace.admission.retry_after
    running, now = retry_after._clock, retry_after._clock()
    retry_after._clock = lambda: now
    try:
        yield retry_after
    finally:
        retry_after._clock = running


def test_cap_reached_sheds_with_retry_after_and_loses_nothing(backend_api: Api) -> None:
    api = backend_api
    retry = api.settings.retry_after_seconds
    first, second = b"kept\n", b"refused first\n"
    with api.http() as c:
        assert c.post("/put_file", json=meta(first, filepath="/a")).status_code == 201
        before = c.get("/stats").json()
        routes = ("/put_file", "/files", "/upload_file/{sha256}")
        shed_before = [_shed(route) for route in routes]
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
    # Refused on arrival, each counted under its route.
    assert [_shed(route) - shed for route, shed in zip(routes, shed_before, strict=True)] == [2, 1, 1]


def test_the_clients_retry_honours_retry_after_and_gets_through(start_api: Callable[..., Api]) -> None:
    api = start_api(database_max_concurrency=CAP, retry_after_seconds=1)
    record = FileMetadata.model_validate(meta(b"retried\n", filepath="/retried"))
    shed_before = _shed_total()

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
        wait_until(lambda: _shed_total() >= shed_before + 2, 30, "two refusals")
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
            # the slow write's own retries were refused just before
            _assert_shed(c.post("/put_file", json=meta(b"shed\n", filepath="/shed")), retry, grown=True)
    assert answers[-1].status_code == 201 and all(r.status_code == 503 for r in answers[:-1])
    with api.http() as c:
        paths = {f["filepath"] for f in c.get("/files", params={"hostname": "node-1"}).json()["items"]}
        assert paths == {"/warm", "/slow"}
        assert c.post("/put_file", json=meta(b"shed\n", filepath="/shed")).status_code == 201


def test_an_admitted_upload_waits_for_a_slot_and_newcomers_are_refused(backend_api: Api) -> None:
    """An upload is admitted at its first database call (the content lookup). If the cap is full
    by the time it has written the body, its ``mark_stored`` waits for a slot rather than being
    refused -- which would throw the received body away for the client to send again -- and a
    request arriving while it waits is refused on arrival, so the slot goes to it first."""
    api = backend_api
    assert api.served is not None
    served, admission = api.served, api.served.app.state.putplace.admission
    data = b"admitted upload\n" * 4096
    sha = meta(data)["sha256"]
    with api.http() as c:
        assert c.post("/put_file", json=meta(data, filepath="/admitted")).status_code == 201
    looked_up = metrics.BACKEND_SECONDS.labels("database", "get_content", "ok")
    before = looked_up._sum.get()
    rest_of_body = threading.Event()

    def body() -> Iterator[bytes]:
        yield data[:4096]
        rest_of_body.wait(30)
        yield data[4096:]

    answers: list[httpx.Response] = []

    def upload() -> None:
        with api.http() as c:
            answers.append(c.post(f"/upload_file/{sha}", content=body()))

    uploader = threading.Thread(target=upload)
    uploader.start()
    try:
        wait_until(lambda: looked_up._sum.get() > before, 30, "the upload's content lookup done")
        with cap_reached(api):
            rest_of_body.set()
            wait_until(lambda: served.call(lambda: admission.waiting) == 1, 30, "mark_stored waiting for a slot")
            with api.http() as c:
                _assert_shed(
                    c.post("/put_file", json=meta(b"newcomer\n", filepath="/new")),
                    api.settings.retry_after_seconds,
                    grown=True,
                )
            assert answers == []  # still waiting, not refused
    finally:
        rest_of_body.set()
        uploader.join(timeout=60)
    assert answers[0].status_code == 200, answers[0].text
    with api.http() as c:
        assert c.get(f"/content/{sha}").content == data
        assert [f["filepath"] for f in c.get("/files", params={"hostname": "node-1"}).json()["items"]] == ["/admitted"]


def test_refused_on_arrival_before_the_key_is_looked_up(backend_api: Api) -> None:
    """At the cap a request costs no key lookup: no key, a wrong key and a valid one get the same
    503, so the refusal tells nothing about keys."""
    api = backend_api
    retry = api.settings.retry_after_seconds
    lookups = metrics.BACKEND_SECONDS.labels("database", "key_by_hash", "ok")
    with cap_reached(api):
        looked_up, lookups_shed = lookups._sum.get(), _shed("key_by_hash")
        answers = []
        for key in (None, "pp_not_a_key_0123456789", api.admin_key):
            with api.http(key) as c:
                r = c.post("/put_file", json=meta(b"refused\n", filepath="/refused"))
            _assert_shed(r, retry)
            answers.append((r.status_code, r.json(), "www-authenticate" in r.headers))
        assert answers[0] == answers[1] == answers[2]
        assert (lookups._sum.get(), _shed("key_by_hash")) == (looked_up, lookups_shed)
    with api.http(None) as c:  # the cap free again: a missing key is a 401 as ever
        assert c.post("/put_file", json=meta(b"refused\n", filepath="/refused")).status_code == 401
    with api.http() as c:
        assert c.get("/files", params={"hostname": "node-1"}).json()["items"] == []


def test_retry_after_grows_with_the_refusals_and_spreads_them(start_api: Callable[..., Api]) -> None:
    api = start_api(database_max_concurrency=CAP, retry_after_seconds=2, retry_after_max_seconds=9)
    with clock_stopped(api), cap_reached(api), api.http() as c:
        waits = [int(c.get("/files", params={"hostname": "node-1"}).headers["retry-after"]) for _ in range(120)]
    # The first refusals: the least wait. Then, as 2 * (1 + rate / CAP) grows (rate: refusals
    # per second over PRESSURE_SECONDS; here 70 of them reach the ceiling), waits spread from 2
    # up to the ceiling.
    assert waits[:5] == [2] * 5
    assert set(waits[70:]) == set(range(2, 10))


def test_retry_after_of_successive_refusals() -> None:
    """The rule itself, on a clock the test moves."""
    now = [100.0]
    ra = RetryAfter(base=5, ceiling=30, limit=4, clock=lambda: now[0])
    assert ra.upper() == 5
    assert [ra.refused() for _ in range(3)] == [5, 5, 5]  # a few refusals: no pressure yet
    for _ in range(77):
        ra.refused()
    # 80 refusals in an instant, 8 a second over the time constant, 2 per slot: 5 * (1 + 2).
    assert ra.upper() == 15
    for _ in range(1000):
        ra.refused()
    assert ra.upper() == 30  # the ceiling
    waits = [ra.refused() for _ in range(100)]
    assert set(waits) == set(range(5, 31))  # spread over all of it
    assert max(waits.count(w) for w in waits) <= 5  # evenly: 100 / 26 each, give or take one
    now[0] += 10 * PRESSURE_SECONDS  # the load gone: back to the least wait
    assert ra.upper() == 5 and ra.refused() == 5


def test_background_work_refused_at_the_cap_logs_no_warning_and_goes_on(
    start_api: Callable[..., Api], caplog: pytest.LogCaptureFixture
) -> None:
    """The webhook worker reads the database every pass: refused at the cap, a pass is skipped
    without a WARNING (the refusals are counted; an overload would otherwise log one per pass),
    and the worker delivers again once the cap frees."""
    api = start_api(database_max_concurrency=CAP, webhook_poll_seconds=0.1)
    content = b"after the overload\n"
    with receiving() as receiver, api.http() as c:
        r = c.post("/webhooks/subscriptions", json={"url": receiver.url("/hook")})
        assert r.status_code == 201, r.text
        refused_before = _shed("delivery_head")  # a pass's first call to the database
        with caplog.at_level(logging.WARNING), cap_reached(api):
            wait_until(lambda: _shed("delivery_head") >= refused_before + 3, 30, "passes refused at the cap")
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert warnings == []
        assert c.post("/put_file", json=meta(content, filepath="/a")).json()["upload_required"]
        assert c.post(f"/upload_file/{meta(content)['sha256']}", content=content).status_code == 200
        got = receiver.wait_for(1, "/hook")
        assert [(d.event, d.payload["data"]["sha256"]) for d in got] == [("file.uploaded", meta(content)["sha256"])]
