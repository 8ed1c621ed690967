"""Webhooks against a real receiver on 127.0.0.1: what each event says, its signature, the order
per file, retries until a dead letter and its replay, a receiver down for a minute, bad input."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from putplace_api.maintenance.common import opened
from putplace_api.maintenance.verify import VerifyOptions, verify
from putplace_client import NotFoundError, PutPlaceClient
from putplace_client.models import WebhookEvent
from tests.api.conftest import Api, meta, put_objects, s3_settings, sha
from tests.processes import metric
from tests.waiting import wait_until
from tests.webhook_receiver import Receiver, receiving

# Short waits, so that retries happen within a test; the behaviour is what is checked, never a time.
DOWN_SECONDS = 60
FAST = {"webhook_backoff_seconds": 0.2, "webhook_backoff_max_seconds": 1.0, "webhook_poll_seconds": 0.2}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


@pytest.fixture(params=["sqlite+local", "mongodb+s3"])
def start_hooked(request: pytest.FixtureRequest, start_api: Callable[..., Api]) -> Callable[..., Api]:
    """Starts the API on each backend pair with fast webhook retries (plus the given settings)."""

    def start(**overrides: Any) -> Api:
        settings = {**FAST, **overrides}
        if request.param == "sqlite+local":
            return start_api(**settings)
        url = request.getfixturevalue("mongodb_url").rstrip("/") + f"/pp_{uuid.uuid4().hex[:12]}"
        return start_api(database_url=url, **s3_settings(request.getfixturevalue("seaweedfs")), **settings)

    return start


def subscribe(c: httpx.Client, url: str, events: list[str] | None = None) -> dict[str, Any]:
    r = c.post("/webhooks/subscriptions", json={"url": url, **({"events": events} if events else {})})
    assert r.status_code == 201, r.text
    return dict(r.json())


def readme_check() -> Callable[..., bool]:
    """The signature check the README shows a receiver, as written there."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Webhooks\n", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.+?)\n```", section, flags=re.S)
    assert len(code) == 1, "the README's Webhooks section shows one Python check"
    scope: dict[str, Any] = {}
    exec(code[0], scope)
    return cast(Callable[..., bool], scope["genuine"])


def _as_sent(headers: dict[str, str]) -> dict[str, str]:
    """Header names as the README spells them (what a receiver's framework may hand over)."""
    return {
        "-".join(w.capitalize() for w in k.split("-")).replace("Putplace", "PutPlace"): v for k, v in headers.items()
    }


def test_events_are_signed_and_ordered(start_hooked: Callable[..., Api], receiver: Receiver) -> None:
    api = start_hooked()
    content, other, bad = b"shared content\n", b"another\n", b"never stored\n"
    with api.http() as c:
        everything = subscribe(c, receiver.url("/all"))
        deletes = subscribe(c, receiver.url("/deletes"), ["file.deleted"])
        assert everything["secret"].startswith("whsec_") and everything["secret"] != deletes["secret"]
        listed = c.get("/webhooks/subscriptions").json()
        assert {s["id"] for s in listed} == {everything["id"], deletes["id"]}
        assert all("secret" not in s for s in listed), "a secret is shown once, at creation"

        assert c.post("/put_file", json=meta(content, filepath="/a")).json()["upload_required"]
        up = c.post(f"/upload_file/{sha(content)}", params={"hostname": "node-1", "filepath": "/a"}, content=content)
        assert up.status_code == 200
        for _ in range(2):  # the same path announced and deleted twice; unchanged re-announcements tell nobody
            assert c.post("/put_file", json=meta(content, filepath="/b")).status_code == 201
            assert c.post("/put_file", json=meta(content, filepath="/b")).status_code == 201
            assert c.delete("/files", params={"hostname": "node-1", "filepath": "/b"}).status_code == 200
        assert (
            c.post("/put_files", json={"files": [meta(bad, filepath="/c"), meta(other, filepath="/d")]}).status_code
            == 201
        )
        refused = c.post(f"/upload_file/{sha(bad)}", content=b"not those bytes\n")
        assert refused.status_code == 400 and "does not match" in refused.json()["detail"]
        assert c.post("/upload_files", files=[(sha(other), ("f", other))]).json()["files"][0]["status"] == "uploaded"

    expected = [
        ("file.uploaded", {"sha256": sha(content), "filepath": "/a"}),
        ("file.duplicate", {"sha256": sha(content), "filepath": "/b"}),
        ("file.deleted", {"filepath": "/b"}),
        ("file.duplicate", {"sha256": sha(content), "filepath": "/b"}),
        ("file.deleted", {"filepath": "/b"}),
        ("upload.mismatch", {"sha256": sha(bad)}),
        ("file.uploaded", {"sha256": sha(other)}),
    ]
    got = receiver.wait_for(len(expected), "/all")
    assert [
        (d.event, {k: d.payload["data"][k] for k in want}) for d, (_, want) in zip(got, expected, strict=True)
    ] == expected
    assert [d.event for d in got] == [d.payload["event"] for d in got]
    assert [d.id for d in got] == [d.payload["id"] for d in got] == sorted(d.id for d in got)
    assert all(d.signed_by(everything["secret"]) for d in got)
    genuine = readme_check()
    assert all(genuine(everything["secret"], _as_sent(d.headers), d.body) for d in got)
    assert not genuine(deletes["secret"], _as_sent(got[0].headers), got[0].body)
    assert not any(d.signed_by(deletes["secret"]) for d in got), "another secret does not verify"
    tampered = got[0].body.replace(b"/a", b"/z")
    assert tampered != got[0].body
    assert not type(got[0])(got[0].path, got[0].headers, tampered, 200).signed_by(everything["secret"])

    only = receiver.wait_for(2, "/deletes")
    assert [d.event for d in only] == ["file.deleted", "file.deleted"]
    assert all(d.signed_by(deletes["secret"]) for d in only)
    assert len(receiver.delivered()) == len(expected) + 2, "nothing else was sent"


def test_a_receiver_answering_500_gets_dead_letters_an_admin_replays(
    start_hooked: Callable[..., Api], receiver: Receiver
) -> None:
    api = start_hooked(webhook_max_attempts=3)
    receiver.status = 500
    with api.http() as c:
        sub = subscribe(c, receiver.url(), ["file.deleted"])
        for path in ("/x", "/y"):
            assert c.post("/put_file", json=meta(filepath=path)).status_code == 201
            assert c.delete("/files", params={"hostname": "node-1", "filepath": path}).status_code == 200

        def dead() -> list[dict[str, Any]] | None:
            items: list[dict[str, Any]] = c.get("/webhooks/dead_letters").json()["items"]
            return items if len(items) == 2 else None

        letters = wait_until(dead, 60, "two dead letters")
        assert [d["payload"]["data"]["filepath"] for d in letters] == ["/x", "/y"]
        assert all(d["attempts"] == 3 and d["last_error"] == "HTTP 500" for d in letters)
        assert all(d["subscription_id"] == sub["id"] for d in letters)
        assert len(receiver.requests) == 6, "three attempts each, then no more"
        page = c.get("/webhooks/dead_letters", params={"limit": 1}).json()
        assert [d["id"] for d in page["items"]] == [letters[0]["id"]] and page["next_cursor"] == letters[0]["id"]

        receiver.status = 200
        assert c.post(f"/webhooks/dead_letters/{letters[1]['id']}/replay").json() == {"replayed": 1}
        wait_until(lambda: len(receiver.delivered()) == 1, 60, "the replayed delivery")
        assert receiver.delivered()[0].id == letters[1]["id"], "a replay sends the same delivery again"
        assert c.post("/webhooks/dead_letters/replay").json() == {"replayed": 1}
        wait_until(lambda: len(receiver.delivered()) == 2, 60, "the other one")
        assert c.get("/webhooks/dead_letters").json()["items"] == []
        assert c.post(f"/webhooks/dead_letters/{letters[0]['id']}/replay").status_code == 404, "delivered: gone"
        assert c.delete(f"/webhooks/subscriptions/{sub['id']}").status_code == 200
        assert c.get("/webhooks/subscriptions").json() == []
        text = c.get("/metrics").text
        assert metric(text, "putplace_webhook_deliveries_total") >= 8


def test_a_receiver_down_for_a_minute_gets_everything_in_order(start_api: Callable[..., Api]) -> None:
    """Behaviour, not a time bound: a minute of refused connections costs no event and no order."""
    api = start_api(**FAST, webhook_max_attempts=10_000)
    receiver = Receiver()
    receiver.start()
    try:
        with api.http() as c:
            subscribe(c, receiver.url(), ["file.deleted"])
            receiver.stop()
            paths = [f"/down/{i}" for i in range(20)]
            assert c.post("/put_files", json={"files": [meta(filepath=p) for p in paths]}).status_code == 201
            for p in paths:
                assert c.delete("/files", params={"hostname": "node-1", "filepath": p}).status_code == 200

            def failed_attempts() -> float:
                text = c.get("/metrics").text
                return sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("putplace_webhook_deliveries_total{") and 'outcome="retry"' in line
                )

            before = failed_attempts()
            wait_until(lambda: failed_attempts() >= before + 5, 60, "failed attempts while the receiver is down")
            time.sleep(DOWN_SECONDS)  # the outage itself, not a wait for a condition
            receiver.start()  # back, same port
            got = receiver.wait_for(len(paths), timeout=120)
            assert [d.payload["data"]["filepath"] for d in got] == paths
            assert c.get("/webhooks/dead_letters").json()["items"] == []
    finally:
        receiver.stop()


def test_verify_reports_corruption_to_subscribers(start_hooked: Callable[..., Api], receiver: Receiver) -> None:
    api = start_hooked()
    data = b"soon corrupt\n"
    with api.http() as c:
        sub = subscribe(c, receiver.url(), ["content.corrupt"])
        assert c.post("/put_file", json=meta(data)).status_code == 201
        assert c.post(f"/upload_file/{sha(data)}", content=data).status_code == 200

    async def damage_and_verify() -> bool:
        async with opened(api.settings) as backends:
            await put_objects(backends.storage, [(sha(data), b"other bytes\n")])
            return (await verify(backends, VerifyOptions())).ok

    assert not asyncio.run(damage_and_verify())
    got = wait_until(lambda: receiver.delivered() or None, 60, "the corruption event")
    assert [d.event for d in got] == ["content.corrupt"]
    assert got[0].payload["data"]["sha256"] == sha(data) and got[0].signed_by(sub["secret"])


@pytest.mark.parametrize(
    "body",
    [
        {"url": "not a url"},
        {"url": "ftp://example.com/hook"},
        {"url": "http://example.com/" + "a" * 3000},
        {"url": "http://example.com/hook", "events": ["file.exploded"]},
        {"url": "http://example.com/hook", "events": []},
        {"url": "http://example.com/hook", "secret": "mine"},
        {},
    ],
)
def test_bad_subscriptions_are_refused(api: Api, body: dict[str, Any]) -> None:
    with api.http() as c:
        r = c.post("/webhooks/subscriptions", json=body)
        assert r.status_code == 422 and r.headers["content-type"] == "application/json", r.text
        assert c.get("/webhooks/subscriptions").json() == []


def test_unknown_ids_are_404_and_cursors_checked(api: Api) -> None:
    with api.http() as c:
        for method, url in [
            ("DELETE", "/webhooks/subscriptions/0123456789abcdef01234567"),
            ("DELETE", "/webhooks/subscriptions/not-an-id"),
            ("POST", "/webhooks/dead_letters/0123456789abcdef01234567/replay"),
            ("POST", "/webhooks/dead_letters/x/replay"),
        ]:
            r = c.request(method, url)
            assert r.status_code == 404 and "detail" in r.json(), (url, r.text)
        assert c.get("/webhooks/dead_letters", params={"cursor": "zz"}).status_code == 400
        assert c.post("/webhooks/dead_letters/replay").json() == {"replayed": 0}


def test_the_client_manages_webhooks(api: Api, receiver: Receiver) -> None:
    async def run() -> None:
        async with PutPlaceClient(api.url, api.admin_key) as client:
            created = await client.create_webhook(receiver.url(), ["file.deleted"], description="audit")
            assert created.secret.startswith("whsec_") and created.events == [WebhookEvent.FILE_DELETED]
            assert [w.id for w in await client.list_webhooks()] == [created.id]
            assert (await client.dead_letters()).items == [] and await client.replay() == 0
            with pytest.raises(NotFoundError):
                await client.replay("0123456789abcdef01234567")
            await client.delete_webhook(created.id)
            assert await client.list_webhooks() == []
            with pytest.raises(NotFoundError):
                await client.delete_webhook(created.id)

    asyncio.run(run())
