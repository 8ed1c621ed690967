"""No secret leaves the API or the agent through logs, metrics, traces or error messages.

One real ``putplace-api`` (DEBUG logs, traces to a real OTLP/HTTP receiver, content on S3)
and one real agent run; keys are created, revoked, expired, rate-limited and used wrongly
(look-alike keys, keys in query strings, in paths, as bearer tokens). Then every place a
secret could end up is searched for every key, the admin key and the S3 secret key -- and
for their first 16 characters.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.agent.conftest import Agent
from tests.api.conftest import ADMIN_KEY, s3_settings
from tests.processes import ApiProcess
from tests.waiting import wait_until
from tests.webhook_receiver import Receiver


def _create(admin: httpx.Client, **fields: Any) -> dict[str, Any]:
    r = admin.post("/api_keys", json={"name": "leak-test", **fields})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _misuses(key: str) -> list[tuple[str, str, dict[str, str]]]:
    """(method, path, headers) that put ``key`` where it does not belong."""
    return [
        ("GET", "/stats", {"X-API-Key": key + "x"}),
        ("GET", f"/stats?api_key={key}", {}),
        ("GET", f"/files?api_key={key}&cursor={key}", {"X-API-Key": ADMIN_KEY}),
        ("GET", "/stats", {"Authorization": f"Bearer {key}x"}),
        ("GET", f"/get_file/{key}", {"X-API-Key": ADMIN_KEY}),
        ("GET", f"/content/{key}", {"X-API-Key": ADMIN_KEY}),
        ("PUT", f"/api_keys/{key}/revoke", {"X-API-Key": ADMIN_KEY}),
        ("DELETE", f"/api_keys/{key}", {"X-API-Key": ADMIN_KEY}),
        ("DELETE", f"/webhooks/subscriptions/{key}", {"X-API-Key": ADMIN_KEY}),
        ("POST", f"/webhooks/dead_letters/{key}/replay", {"X-API-Key": ADMIN_KEY}),
        ("GET", f"/{key}", {"X-API-Key": ADMIN_KEY}),
        ("GET", f"/{key}", {}),
    ]


def _spans_text(exports: list[tuple[str, str, bytes]]) -> str:
    """Every span's name, attributes and events, decoded, plus the raw payloads."""
    parts: list[str] = []
    for _, _, body in exports:
        parts.append(body.decode("latin-1"))
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    parts.append(span.name)
                    parts.extend(f"{a.key}={a.value}" for a in span.attributes)
                    for event in span.events:
                        parts.append(event.name)
                        parts.extend(f"{a.key}={a.value}" for a in event.attributes)
    return "\n".join(parts)


def test_no_secret_in_logs_metrics_traces_or_error_bodies(
    tmp_path: Path, otlp: tuple[str, list[tuple[str, str, bytes]]], seaweedfs: Any
) -> None:
    endpoint, exports = otlp
    env = {f"PUTPLACE_{name.upper()}": str(value) for name, value in s3_settings(seaweedfs).items()}
    env |= {"PUTPLACE_LOG_LEVEL": "debug", "PUTPLACE_LOG_FORMAT": "text", "PUTPLACE_OTLP_ENDPOINT": endpoint}
    (tmp_path / "api").mkdir()
    look_alike = "pp_" + secrets.token_urlsafe(32)
    used = {ADMIN_KEY, seaweedfs.secret_key, look_alike}
    error_bodies: list[str] = []
    receiver = Receiver(status=500)  # failed deliveries get logged: with no webhook secret
    receiver.start()
    with ApiProcess.running(tmp_path / "api", **env) as api:
        with api.http() as admin:
            writer = _create(admin, scopes=["write"])["api_key"]
            metrics_key = _create(admin, scopes=["metrics"])["api_key"]
            limited = _create(admin, scopes=["read"], rate_limit=0.01, rate_limit_burst=1)["api_key"]
            expired = _create(admin, scopes=["read"], expires_at=(datetime.now(UTC) - timedelta(1)).isoformat())
            revoked = _create(admin, scopes=["admin"])
            assert admin.put(f"/api_keys/{revoked['_id']}/revoke").status_code == 200
            hook = admin.post("/webhooks/subscriptions", json={"url": receiver.url()})
            assert hook.status_code == 201, hook.text
            used.add(hook.json()["secret"])
        used |= {writer, metrics_key, limited, expired["api_key"], revoked["api_key"]}

        tree = tmp_path / "tree"
        tree.mkdir()
        for i in range(5):
            (tree / f"file{i}.txt").write_text(f"content {i}\n" * (i + 1))
        agent = Agent(api, tree, tmp_path, key=writer, extra=["--log-level", "debug"])
        code, summary = agent.once(timeout=120)
        assert code == 0 and summary, agent.log_path.read_text()
        assert len(api.catalogue("node-a")) == 5
        wait_until(lambda: len(receiver.requests) >= 2, 60, "failed webhook deliveries")
        receiver.stop()

        with httpx.Client(base_url=api.url, timeout=30) as c:
            statuses = [c.get("/stats", headers={"X-API-Key": limited}).status_code for _ in range(2)]
            assert statuses == [200, 429]
            for key in sorted(used):
                for method, path, headers in _misuses(key):
                    r = c.request(method, path, headers=headers)
                    assert 400 <= r.status_code < 500, (method, path, r.status_code)
                    error_bodies.append(r.text)
            for key in (expired["api_key"], revoked["api_key"]):
                r = c.get("/stats", headers={"X-API-Key": key})
                assert r.status_code == 401
                error_bodies.append(r.text)
            metrics = c.get("/metrics", headers={"Authorization": f"Bearer {metrics_key}"})
            assert metrics.status_code == 200 and "putplace_rate_limited_total" in metrics.text
    # Stopped: the API flushed its last spans on the way out.
    spans = _spans_text(exports)
    assert "GET /stats" in spans and "PUT" in spans, "the spans of the requests above were not exported"
    places = {
        "API log": (tmp_path / "api" / "api.log").read_text(errors="replace"),
        "agent log": agent.log_path.read_text(errors="replace"),
        "API metrics": metrics.text,
        "spans": spans,
        "error responses": "\n".join(error_bodies),
    }
    assert "DEBUG" in places["API log"], "the API did not log at DEBUG level"
    leaks = sorted(
        (place, secret[:8] + "…")
        for secret in used
        for place, text in places.items()
        if secret in text or secret[:16] in text
    )
    assert not leaks, f"secrets (or their first 16 characters) found: {leaks}"
