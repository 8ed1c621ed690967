"""API keys: authentication, scopes, revocation, expiry, storage as hashes, bootstrap."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from putplace_api.app import create_app
from tests.api.conftest import Api, meta, sha
from tests.servers.base import free_ports

MISSING = {"detail": "API key required. Include X-API-Key header."}
INVALID = {"detail": "Invalid or inactive API key"}
DATA = b"node secret: only readers may see it\n"
PUBLIC = None  # needed scope of an endpoint open to everyone
ANY_KEY = "any"  # needed scope of an endpoint any valid key may call
UPLOAD_ID = "0123456789abcdef0123456789abcdef"  # an upload session id nobody has

# A request builder gets an admin client (to prepare what the request needs, e.g. a record to
# delete) and returns the request's arguments: httpx.Client.request(method, **args).
Build = Callable[[httpx.Client], dict[str, Any]]


def _fresh_record(admin: httpx.Client) -> dict[str, Any]:
    path = f"/tmp/{uuid.uuid4().hex}"
    assert admin.post("/put_file", json=meta(DATA, filepath=path)).status_code == 201
    return {"params": {"hostname": "node-1", "filepath": path}}


def _fresh_key_id(admin: httpx.Client) -> str:
    r = admin.post("/api_keys", json={"name": "victim", "scopes": ["read"]})
    assert r.status_code == 201
    return str(r.json()["_id"])


def _fresh_subscription_id(admin: httpx.Client) -> str:
    r = admin.post("/webhooks/subscriptions", json={"url": "http://127.0.0.1:9/victim"})
    assert r.status_code == 201
    return str(r.json()["id"])


def _fixed(**args: Any) -> Build:
    return lambda _: args


# Every route the app serves: (method, path template) -> (needed scope, request, success status).
# A route missing here fails test_authorization_matrix: new endpoints must be placed in it.
MATRIX: dict[tuple[str, str], tuple[str | None, Build, int]] = {
    ("GET", "/"): (PUBLIC, _fixed(url="/"), 200),
    ("GET", "/health"): (PUBLIC, _fixed(url="/health"), 200),
    ("GET", "/healthz"): (PUBLIC, _fixed(url="/healthz"), 200),
    ("GET", "/readyz"): (PUBLIC, _fixed(url="/readyz"), 200),
    ("GET", "/openapi.json"): (PUBLIC, _fixed(url="/openapi.json"), 200),
    ("GET", "/docs"): (PUBLIC, _fixed(url="/docs"), 200),
    ("GET", "/docs/oauth2-redirect"): (PUBLIC, _fixed(url="/docs/oauth2-redirect"), 200),
    ("GET", "/redoc"): (PUBLIC, _fixed(url="/redoc"), 200),
    ("GET", "/metrics"): ("metrics", _fixed(url="/metrics"), 200),
    ("POST", "/put_file"): ("write", _fixed(url="/put_file", json=meta(DATA)), 201),
    ("POST", "/put_files"): ("write", _fixed(url="/put_files", json={"files": [meta(DATA)]}), 201),
    ("POST", "/upload_file/{sha256}"): ("write", _fixed(url=f"/upload_file/{sha(DATA)}", content=DATA), 200),
    ("POST", "/upload_files"): ("write", _fixed(url="/upload_files", files=[(sha(DATA), ("f", DATA))]), 200),
    ("DELETE", "/files"): ("write", lambda admin: {"url": "/files", **_fresh_record(admin)}, 200),
    # DATA is stored already (409); no session has that id (404): refusals come first.
    ("POST", "/uploads"): ("write", _fixed(url="/uploads", json={"sha256": sha(DATA), "size": len(DATA)}), 409),
    ("GET", "/uploads/{upload_id}"): ("write", _fixed(url=f"/uploads/{UPLOAD_ID}"), 404),
    ("PUT", "/uploads/{upload_id}/chunks/{number}"): (
        "write", _fixed(url=f"/uploads/{UPLOAD_ID}/chunks/0", content=DATA), 404
    ),
    ("POST", "/uploads/{upload_id}/complete"): ("write", _fixed(url=f"/uploads/{UPLOAD_ID}/complete"), 404),
    ("DELETE", "/uploads/{upload_id}"): ("write", _fixed(url=f"/uploads/{UPLOAD_ID}"), 404),
    ("GET", "/get_file/{sha256}"): ("read", _fixed(url=f"/get_file/{sha(DATA)}"), 200),
    ("GET", "/content/{sha256}"): ("read", _fixed(url=f"/content/{sha(DATA)}"), 200),
    ("GET", "/files"): ("read", _fixed(url="/files"), 200),
    ("GET", "/files/history"): (
        "read", _fixed(url="/files/history", params={"hostname": "node-1", "filepath": "/var/log/app.log"}), 200
    ),
    ("GET", "/stats"): ("read", _fixed(url="/stats"), 200),
    ("GET", "/whoami"): (ANY_KEY, _fixed(url="/whoami"), 200),
    ("GET", "/nodes"): ("read", _fixed(url="/nodes"), 200),
    ("GET", "/files/tree"): ("read", _fixed(url="/files/tree", params={"hostname": "node-1", "dir": "/var"}), 200),
    ("GET", "/files/current"): (
        "read", _fixed(url="/files/current", params={"hostname": "node-1", "filepath": "/var/log/app.log"}), 200
    ),
    ("GET", "/files/search"): ("read", _fixed(url="/files/search", params={"q": "*.log"}), 200),
    ("GET", "/files/recent"): ("read", _fixed(url="/files/recent"), 200),
    # The web console's pages hold no data (its script calls the API with the user's key).
    ("GET", "/ui"): (PUBLIC, _fixed(url="/ui"), 200),
    ("GET", "/ui/"): (PUBLIC, _fixed(url="/ui/"), 307),
    ("GET", "/ui/signin"): (PUBLIC, _fixed(url="/ui/signin"), 200),
    ("GET", "/ui/browse"): (PUBLIC, _fixed(url="/ui/browse"), 200),
    ("GET", "/ui/file"): (PUBLIC, _fixed(url="/ui/file"), 200),
    ("GET", "/ui/search"): (PUBLIC, _fixed(url="/ui/search"), 200),
    ("GET", "/ui/keys"): (PUBLIC, _fixed(url="/ui/keys"), 200),
    ("GET", "/api_keys"): ("admin", _fixed(url="/api_keys"), 200),
    ("POST", "/api_keys"): ("admin", _fixed(url="/api_keys", json={"name": "k"}), 201),
    ("PUT", "/api_keys/{key_id}/revoke"): ("admin", lambda a: {"url": f"/api_keys/{_fresh_key_id(a)}/revoke"}, 200),
    ("DELETE", "/api_keys/{key_id}"): ("admin", lambda a: {"url": f"/api_keys/{_fresh_key_id(a)}"}, 200),
    ("POST", "/webhooks/subscriptions"): (
        "admin", _fixed(url="/webhooks/subscriptions", json={"url": "http://127.0.0.1:9/hook"}), 201
    ),
    ("GET", "/webhooks/subscriptions"): ("admin", _fixed(url="/webhooks/subscriptions"), 200),
    ("DELETE", "/webhooks/subscriptions/{subscription_id}"): (
        "admin", lambda a: {"url": f"/webhooks/subscriptions/{_fresh_subscription_id(a)}"}, 200
    ),
    ("GET", "/webhooks/dead_letters"): ("admin", _fixed(url="/webhooks/dead_letters"), 200),
    ("POST", "/webhooks/dead_letters/replay"): ("admin", _fixed(url="/webhooks/dead_letters/replay"), 200),
    # No dead letter exists: an admin is told so (404), everyone else is refused before that.
    ("POST", "/webhooks/dead_letters/{delivery_id}/replay"): (
        "admin", _fixed(url="/webhooks/dead_letters/0123456789abcdef01234567/replay"), 404
    ),
}  # fmt: skip


def _served_routes(api: Api) -> set[tuple[str, str]]:
    """(method, path) of every route of the app as the API builds it (HEAD comes with GET)."""
    routes = iter_route_contexts(create_app(api.settings).routes)
    return {(m, str(r.path)) for r in routes for m in r.methods or () if m != "HEAD"}


# Keys with read and write, limited to hosts and paths: "limited" to those of the records the
# matrix uses (node-1, /var/log and /tmp), with quotas (the matrix's content is stored already,
# so uploading it again costs nothing); "elsewhere" to another host.
LIMITED = ("limited", "elsewhere")
OUTSIDE = "This API key may not access /var/log/app.log on node-1: it is limited to hosts node-2"
NOT_FOUND = {"detail": f"File with SHA256 {sha(DATA)} not found"}
# What "elsewhere" gets where it has the scope: 403 for a record it names, 404 (as for a content
# nobody announced) for a content, and empty results -- whether or not the records exist.
ELSEWHERE: dict[tuple[str, str], tuple[int, Any]] = {
    ("POST", "/put_file"): (403, {"detail": OUTSIDE}),
    ("POST", "/put_files"): (403, {"detail": OUTSIDE}),
    ("POST", "/upload_file/{sha256}"): (
        404, {"detail": f"No metadata announced for SHA256 {sha(DATA)}; call /put_file first"}
    ),
    ("POST", "/upload_files"): (200, {"files": [{"sha256": sha(DATA), "status": "not_announced", "size": len(DATA)}]}),
    ("DELETE", "/files"): (403, None),  # the message names the fresh record's random path
    ("POST", "/uploads"): (404, {"detail": f"No metadata announced for SHA256 {sha(DATA)}; call /put_file first"}),
    ("GET", "/get_file/{sha256}"): (404, NOT_FOUND),
    ("GET", "/content/{sha256}"): (404, NOT_FOUND),
    ("GET", "/files"): (200, {"items": [], "next_cursor": None}),
    ("GET", "/files/history"): (403, {"detail": OUTSIDE}),
    ("GET", "/files/current"): (403, {"detail": OUTSIDE}),
    ("GET", "/nodes"): (200, {"items": [], "next_cursor": None}),
    ("GET", "/files/tree"): (200, {"items": [], "next_cursor": None}),
    ("GET", "/files/search"): (200, {"items": [], "next_cursor": None}),
    ("GET", "/files/recent"): (200, {"items": [], "next_cursor": None}),
    ("GET", "/stats"): (
        200,
        {"files": 0, "hosts": 0, "contents_stored": 0, "stored_bytes": 0, "logical_bytes": 0, "dedup_ratio": 1.0},
    ),
}  # fmt: skip


def _principals(api: Api) -> dict[str, str | None]:
    """The nine kinds of caller; revoked and expired keys had every scope."""
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    with api.http() as admin:
        created = admin.post("/api_keys", json={"name": "revoked", "scopes": ["admin"]}).json()
        assert admin.put(f"/api_keys/{created['_id']}/revoke").status_code == 200
    return {
        "none": None,
        "invalid": "pp_" + secrets.token_urlsafe(32),  # shaped like a real key
        "revoked": created["api_key"],
        "expired": api.new_key("admin", expires_at=past),
        "read": api.new_key("read", expires_at=future),  # a future expiry does not refuse it
        "write": api.new_key("write"),
        "admin": api.admin_key,
        "metrics": api.new_key("metrics"),
        "limited": api.new_key(
            "read", "write", hostnames=["node-1"], path_prefixes=["/var/log/", "/tmp"], max_files=1, max_bytes=1
        ),
        "elsewhere": api.new_key("read", "write", hostnames=["node-2"]),
    }


def _expected(principal: str, route: tuple[str, str], needed: str | None, ok: int) -> tuple[int, Any]:
    if needed is PUBLIC:
        return ok, None
    if principal in ("none", "invalid", "revoked", "expired"):
        return 401, MISSING if principal == "none" else INVALID
    if principal == "elsewhere" and route in ELSEWHERE:
        return ELSEWHERE[route]
    if principal in (needed, "admin") or needed == ANY_KEY or (principal in LIMITED and needed in ("read", "write")):
        return ok, None
    return 403, {"detail": f"This API key lacks the '{needed}' scope"}


def test_authorization_matrix(api: Api) -> None:
    """Every route x every kind of caller gets exactly the expected status; refusals say only
    why (so a write-only key, which may announce and upload, never sees content or metadata, and
    a key limited to another host sees nothing of this one's records)."""
    assert _served_routes(api) == set(MATRIX), "every served route needs a row in MATRIX"
    principals = _principals(api)
    with api.http() as admin:  # the content readers should get: announced and uploaded
        assert admin.post("/put_file", json=meta(DATA)).status_code == 201
        assert admin.post(f"/upload_file/{sha(DATA)}", content=DATA).status_code == 200
        got, want = {}, {}
        for (method, path), (needed, build, ok) in MATRIX.items():
            for name, key in principals.items():
                args = build(admin)
                with api.http(key=key) as c:
                    r = c.request(method, **args)
                status, body = _expected(name, (method, path), needed, ok)
                got[method, path, name] = (r.status_code, r.json() if body is not None else None)
                want[method, path, name] = (status, body)
                if status in (401, 403, 404):  # ("elsewhere"'s refusals echo the path it named)
                    assert DATA.decode() not in r.text
                    assert name == "elsewhere" or "/var/log/app.log" not in r.text
                    if status == 401:
                        assert r.headers["www-authenticate"] == "ApiKey"
    assert got == want


def test_auth_is_checked_before_body_validation(api: Api) -> None:
    with api.http(key=None) as c:
        r = c.post("/put_file", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 401 and r.json() == MISSING
    with api.http(key="pp_wrong") as c:
        r = c.post("/put_file", json={"sha256": "nope"})
    assert r.status_code == 401 and r.json() == INVALID


def test_revocation_and_deletion_are_immediate(api: Api) -> None:
    with api.http() as admin:
        created = admin.post("/api_keys", json={"name": "agent", "scopes": ["read"]}).json()
        key, key_id = created["api_key"], created["_id"]
        with api.http(key=key) as c:
            assert c.get("/stats").status_code == 200
            r = admin.put(f"/api_keys/{key_id}/revoke")
            assert r.status_code == 200 and r.json() == {"message": f"API key {key_id} revoked successfully"}
            assert c.get("/stats").json() == INVALID
        listed = {k["_id"]: k for k in admin.get("/api_keys").json()}
        assert listed[key_id]["is_active"] is False and listed[key_id]["revoked_at"]
        r = admin.delete(f"/api_keys/{key_id}")
        assert r.status_code == 200 and r.json() == {"message": f"API key {key_id} deleted successfully"}
        assert key_id not in {k["_id"] for k in admin.get("/api_keys").json()}


@pytest.mark.parametrize("key_id", ["0" * 24, "not-an-id", "x" * 500])
def test_unknown_or_malformed_key_id_is_404(api: Api, key_id: str) -> None:
    with api.http() as c:
        for r in (c.put(f"/api_keys/{key_id}/revoke"), c.delete(f"/api_keys/{key_id}")):
            detail = f"API key {key_id} not found" if key_id == "0" * 24 else "API key not found"
            assert r.status_code == 404 and r.json() == {"detail": detail}


def test_created_key_shape_and_listing_never_shows_secrets(api: Api) -> None:
    with api.http() as c:
        r = c.post("/api_keys", json={"name": "ci", "description": "for CI", "scopes": ["write"], "rate_limit": 5})
        assert r.status_code == 201
        created = r.json()
        assert created["api_key"].startswith("pp_") and len(created["api_key"]) >= 40
        assert {"_id", "name", "description", "created_at", "is_active", "scopes"} <= created.keys()
        assert created["is_active"] is True and created["scopes"] == ["write"]
        listing = c.get("/api_keys")
        assert created["api_key"] not in listing.text
        assert all("api_key" not in k and "key_hash" not in k for k in listing.json())
        for bad in ({"name": ""}, {"name": "x" * 101}, {"name": "k", "scopes": ["root"]}, {}):
            assert c.post("/api_keys", json=bad).status_code == 422, bad


def test_keys_are_stored_only_as_hashes(api: Api) -> None:
    key = api.new_key("read")
    with api.http(key=key) as c:
        c.get("/stats")
    db = Path(api.settings.data_dir) / "putplace.db"
    raw = b"".join(p.read_bytes() for p in db.parent.glob("putplace.db*"))
    assert key.encode() not in raw and api.admin_key.encode() not in raw
    assert sha(key.encode()).encode() in raw


def test_last_used_at_is_recorded(api: Api) -> None:
    key = api.new_key("read")
    with api.http(key=key) as c:
        c.get("/stats")
    with api.http() as c:
        used = [k for k in c.get("/api_keys").json() if k["key_prefix"] == key[:9]]
    assert used and used[0]["last_used_at"] is not None


def test_generated_admin_key_is_printed_once_and_written_0600(tmp_path: Path, start_api: Callable[..., Api]) -> None:
    data_dir = tmp_path / "fresh"
    port = free_ports(1)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUTPLACE_")}
    env |= {"PUTPLACE_DATA_DIR": str(data_dir), "PUTPLACE_PORT": str(port), "PUTPLACE_LOG_LEVEL": "warning"}

    def run_once() -> str:
        proc = subprocess.Popen(
            [sys.executable, "-m", "putplace_api.cli"], env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path
        )
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None:
                    break
                import time

                time.sleep(0.05)
            key_file = data_dir / "admin-key"
            key = key_file.read_text().strip()
            assert httpx.get(f"http://127.0.0.1:{port}/stats", headers={"X-API-Key": key}).status_code == 200
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
        return err

    first = run_once()
    key = (data_dir / "admin-key").read_text().strip()
    assert key in first
    assert stat.S_IMODE((data_dir / "admin-key").stat().st_mode) == 0o600
    second = run_once()
    assert key not in second and "generated an admin API key" not in second
