"""API keys: authentication, scopes, revocation, expiry, storage as hashes, bootstrap."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import Api, meta, sha
from tests.servers.base import free_ports

MISSING = {"detail": "API key required. Include X-API-Key header."}
INVALID = {"detail": "Invalid or inactive API key"}
SHA = "a" * 64

# Every key-protected endpoint, with a request that would pass validation.
ENDPOINTS: list[tuple[str, str, str]] = [
    ("POST", "/put_file", "write"),
    ("POST", "/put_files", "write"),
    ("POST", f"/upload_file/{SHA}", "write"),
    ("DELETE", "/files?hostname=h&filepath=/p", "write"),
    ("GET", f"/get_file/{SHA}", "read"),
    ("GET", f"/content/{SHA}", "read"),
    ("GET", "/files", "read"),
    ("GET", "/files/history?hostname=h&filepath=/p", "read"),
    ("GET", "/stats", "read"),
    ("GET", "/api_keys", "admin"),
    ("POST", "/api_keys", "admin"),
    ("PUT", f"/api_keys/{'0' * 24}/revoke", "admin"),
    ("DELETE", f"/api_keys/{'0' * 24}", "admin"),
    ("GET", "/metrics", "metrics"),
]


def _call(c: httpx.Client, method: str, path: str) -> httpx.Response:
    bodies = {"/put_file": meta(), "/put_files": {"files": [meta()]}, "/api_keys": {"name": "k"}}
    json = bodies.get(path) if method == "POST" else None
    content = b"x" if path.startswith("/upload_file") else None
    return c.request(method, path, json=json, content=content)


@pytest.mark.parametrize(("method", "path", "scope"), ENDPOINTS)
def test_every_endpoint_needs_a_key(api: Api, method: str, path: str, scope: str) -> None:
    with api.http(key=None) as c:
        r = _call(c, method, path)
        assert r.status_code == 401 and r.json() == MISSING
        assert r.headers["www-authenticate"] == "ApiKey"
    with api.http(key="pp_not_a_real_key") as c:
        r = _call(c, method, path)
        assert r.status_code == 401 and r.json() == INVALID


def test_scope_matrix(api: Api) -> None:
    keys = {s: api.new_key(s) for s in ("read", "write", "admin", "metrics")}
    for method, path, needed in ENDPOINTS:
        for scope, key in keys.items():
            with api.http(key=key) as c:
                status = _call(c, method, path).status_code
            allowed = scope == needed or scope == "admin"
            assert (status != 403) == allowed, (method, path, scope, status)
            assert status not in (401, 500), (method, path, scope, status)


def test_write_only_key_can_announce_and_upload_but_read_nothing(api: Api) -> None:
    writer = api.new_key("write")
    data = b"node secret"
    body = meta(data)
    with api.http(key=writer) as c:
        assert c.post("/put_file", json=body).status_code == 201
        assert c.post(f"/upload_file/{body['sha256']}", files={"file": ("f", data)}).status_code == 200
        # "Content already present" must not turn into read access.
        assert c.post("/put_file", json=body | {"hostname": "other"}).json()["upload_required"] is False
        for path in (f"/content/{body['sha256']}", f"/get_file/{body['sha256']}", "/files", "/stats"):
            r = c.get(path)
            assert r.status_code == 403, path
            assert data.decode() not in r.text


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
            assert r.status_code == 404 and r.json() == {"detail": f"API key {key_id} not found"}


def test_expired_key_is_refused(api: Api) -> None:
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    expired, valid = api.new_key("read", expires_at=past), api.new_key("read", expires_at=future)
    with api.http(key=expired) as c:
        assert c.get("/stats").json() == INVALID
    with api.http(key=valid) as c:
        assert c.get("/stats").status_code == 200


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
