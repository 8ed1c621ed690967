"""Webhooks survive ``kill -9`` of the API: every event of an acknowledged request reaches the
receiver after the restart (at least once; a repeat carries the same delivery id), in order."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from tests.api.conftest import meta
from tests.faults.conftest import api_env_for_s3
from tests.processes import ApiProcess
from tests.webhook_receiver import receiving

# Quick retries, and a short receiver timeout: the lease of a killed process (2 x timeout + 5 s)
# then runs out soon after the restart.
HOOKS = {
    "PUTPLACE_WEBHOOK_BACKOFF_SECONDS": "0.2",
    "PUTPLACE_WEBHOOK_BACKOFF_MAX_SECONDS": "1",
    "PUTPLACE_WEBHOOK_POLL_SECONDS": "0.2",
    "PUTPLACE_WEBHOOK_TIMEOUT_SECONDS": "1",
    "PUTPLACE_WEBHOOK_MAX_ATTEMPTS": "10000",
}
FILES = 40
FIRST = 5  # the receiver answers this many at once, then holds every request until released


@pytest.mark.parametrize("backends", ["sqlite+local", "mongodb+minio"])
def test_api_killed_after_acknowledging_loses_no_event(
    backends: str, request: pytest.FixtureRequest, start_api: Callable[..., ApiProcess]
) -> None:
    env = dict(HOOKS)
    if backends == "mongodb+minio":
        env["PUTPLACE_DATABASE_URL"] = (
            request.getfixturevalue("mongodb_url").rstrip("/") + f"/pp_{uuid.uuid4().hex[:12]}"
        )
        env["PUTPLACE_DATABASE_TIMEOUT_SECONDS"] = "10"
        env.update(api_env_for_s3(request.getfixturevalue("minio")))
    api = start_api(**env)
    with receiving() as receiver:
        receiver.hold_after = FIRST
        paths = [f"/kill/{i:03d}" for i in range(FILES)]
        with api.http() as c:
            r = c.post("/webhooks/subscriptions", json={"url": receiver.url(), "events": ["file.deleted"]})
            assert r.status_code == 201, r.text
            assert c.post("/put_files", json={"files": [meta(filepath=p) for p in paths]}).status_code == 201
            for p in paths:  # each acknowledged before the next is sent
                assert c.delete("/files", params={"hostname": "node-1", "filepath": p}).status_code == 200
        receiver.wait_for(FIRST)
        api.kill()  # right after the last acknowledgement, with deliveries queued and one in flight
        assert len(receiver.delivered()) < FILES, "everything was delivered before the kill"

        api.start()  # same port, same data
        receiver.gate.set()
        got = receiver.wait_for(FILES, timeout=120)
        assert [d.payload["data"]["filepath"] for d in got] == paths, "every event, once each, in order"
        assert [d.id for d in got] == sorted(d.id for d in got)
