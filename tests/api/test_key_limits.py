"""Keys limited to hosts and paths, and keys with quotas, on both backend pairs.

The authorization matrix (test_auth.py) shows each route's answer to a limited key; these tests
follow one limited key through a node's whole life, and a key's quotas through its uploads.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.api.conftest import Api, meta, sha

A, B, SHARED, LOGS = b"node-a's own log\n", b"node-b's secret\n", b"on both nodes\n", b"beside /var/log\n"
ADMINS = b"stored by the admin\n"


def _put(c: httpx.Client, data: bytes, host: str, path: str) -> None:
    assert c.post("/put_file", json=meta(data, hostname=host, filepath=path)).status_code == 201
    assert c.post(f"/upload_file/{sha(data)}", content=data).status_code == 200


def _key(api: Api, **fields: Any) -> dict[str, Any]:
    with api.http() as admin:
        r = admin.post("/api_keys", json={"name": "limited", **fields})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def test_a_key_limited_to_a_node_sees_and_writes_only_that_node(backend_api: Api) -> None:
    api = backend_api
    with api.http() as admin:
        _put(admin, A, "node-a", "/var/log/a.log")
        _put(admin, SHARED, "node-a", "/var/log/shared")
        _put(admin, LOGS, "node-a", "/var/logs/x")  # on node-a, but not under /var/log
        _put(admin, B, "node-b", "/var/log/b.log")
        _put(admin, SHARED, "node-b", "/var/log/shared")
        unstored_b = b"announced on node-b only\n"
        assert admin.post("/put_file", json=meta(unstored_b, hostname="node-b", filepath="/var/log/n")).status_code
    created = _key(api, scopes=["read", "write"], hostnames=["node-a"], path_prefixes=["/var/log/"])
    assert (created["hostnames"], created["path_prefixes"]) == (["node-a"], ["/var/log"])  # kept without the /
    with api.http(key=created["api_key"]) as c:
        # Reads: only node-a's records under /var/log, wherever a query looks.
        listed = c.get("/files").json()["items"]
        assert sorted((f["hostname"], f["filepath"]) for f in listed) == [
            ("node-a", "/var/log/a.log"),
            ("node-a", "/var/log/shared"),
        ]
        assert c.get("/files", params={"hostname": "node-b"}).json()["items"] == []
        assert [f["hostname"] for f in c.get("/files", params={"sha256": sha(SHARED)}).json()["items"]] == ["node-a"]
        assert c.get(f"/get_file/{sha(SHARED)}").json()["hostname"] == "node-a"
        stats = c.get("/stats").json()
        assert (stats["files"], stats["hosts"], stats["contents_stored"]) == (2, 1, 2)
        assert stats["stored_bytes"] == len(A) + len(SHARED)
        # Content only through a record it may see; another node's is unknown to it (404, not 403).
        assert c.get(f"/content/{sha(A)}").content == A
        assert c.get(f"/content/{sha(SHARED)}").content == SHARED
        for other in (B, LOGS):
            for url in (f"/content/{sha(other)}", f"/get_file/{sha(other)}"):
                r = c.get(url)
                assert r.status_code == 404 and r.json() == {"detail": f"File with SHA256 {sha(other)} not found"}
                assert other.decode() not in r.text
        r = c.get("/files/history", params={"hostname": "node-b", "filepath": "/var/log/b.log"})
        assert r.status_code == 403
        assert r.json() == {
            "detail": "This API key may not access /var/log/b.log on node-b: "
            "it is limited to hosts node-a and paths under /var/log"
        }
        assert c.get("/files/history", params={"hostname": "node-a", "filepath": "/var/log/a.log"}).status_code == 200

        # Writes: its own node's paths only; a batch with any other record is refused whole.
        assert c.post("/put_file", json=meta(b"x", hostname="node-b", filepath="/var/log/x")).status_code == 403
        assert c.post("/put_file", json=meta(b"x", hostname="node-a", filepath="/var/logs/x")).status_code == 403
        batch = [meta(b"new", hostname="node-a", filepath="/var/log/new"), meta(b"y", hostname="node-b")]
        r = c.post("/put_files", json={"files": batch})
        assert r.status_code == 403 and r.json()["detail"].startswith(
            "This API key may not access 1 of the 2 records, the first /var/log/app.log on node-b: "
        )
        assert c.get("/files", params={"path_prefix": "/var/log/new"}).json()["items"] == []  # nothing recorded
        assert c.post("/put_file", json=meta(b"new", hostname="node-a", filepath="/var/log/new")).status_code == 201
        assert c.post(f"/upload_file/{sha(b'new')}", content=b"new").status_code == 200
        # Uploading a content announced only on another node: as if it were not announced.
        r = c.post(f"/upload_file/{sha(unstored_b)}", content=unstored_b)
        assert r.status_code == 404
        assert r.json() == {"detail": f"No metadata announced for SHA256 {sha(unstored_b)}; call /put_file first"}
        parts = [(sha(unstored_b), ("f", unstored_b)), (sha(A), ("f", A))]
        statuses = {f["sha256"]: f["status"] for f in c.post("/upload_files", files=parts).json()["files"]}
        assert statuses == {sha(unstored_b): "not_announced", sha(A): "exists"}
        r = c.delete("/files", params={"hostname": "node-b", "filepath": "/var/log/b.log"})
        assert r.status_code == 403 and "node-b" in r.json()["detail"]
        assert c.delete("/files", params={"hostname": "node-a", "filepath": "/var/log/new"}).status_code == 200
    with api.http() as admin:  # nothing of node-b was touched, its unstored content still is
        assert admin.get(f"/content/{sha(B)}").content == B
        assert admin.get("/files", params={"hostname": "node-b"}).json()["items"][0]["filepath"] == "/var/log/b.log"
        assert admin.get(f"/get_file/{sha(unstored_b)}").json()["has_file_content"] is False


def test_quotas_refuse_uploads_past_them_and_the_listing_shows_usage(backend_api: Api) -> None:
    api = backend_api
    contents = [bytes([65 + n]) * size for n, size in enumerate((40, 40, 30, 10))]
    with api.http() as admin:
        for n, data in enumerate(contents):
            assert admin.post("/put_file", json=meta(data, filepath=f"/q/{n}")).status_code == 201
        _put(admin, ADMINS, "node-1", "/q/admin")
    files_key = _key(api, scopes=["write"], max_files=2)
    bytes_key = _key(api, scopes=["write"], max_bytes=50)
    with api.http(key=files_key["api_key"]) as c:
        for _ in range(2):  # refused uploads hold nothing back from the quota
            assert c.post(f"/upload_file/{sha(contents[0])}", content=contents[1]).status_code == 400
        for data in contents[:2]:
            assert c.post(f"/upload_file/{sha(data)}", content=data).status_code == 200
        r = c.post(f"/upload_file/{sha(contents[2])}", content=contents[2])
        assert r.status_code == 413 and r.json() == {"detail": "This API key's quota of 2 files is used up (2 stored)"}
        # A content already stored costs nothing, whoever stored it.
        assert c.post(f"/upload_file/{sha(contents[0])}", content=contents[0]).status_code == 200
        assert c.post(f"/upload_file/{sha(ADMINS)}", content=ADMINS).status_code == 200
    with api.http(key=bytes_key["api_key"]) as c:
        r = c.post(f"/upload_file/{sha(contents[2])}", content=contents[2])
        assert r.status_code == 200
        r = c.post(f"/upload_file/{sha(contents[3])}", content=contents[3])
        assert r.status_code == 200  # 30 + 10 = 40 of 50
        late = b"L" * 20
        assert c.post("/put_file", json=meta(late, filepath="/q/late")).status_code == 201  # announcing is free
        r = c.post(f"/upload_file/{sha(late)}", content=late)
        assert r.status_code == 413
        assert r.json() == {
            "detail": "This API key's quota of 50 bytes has 10 left (40 stored): "
            "too little for this content of 20 bytes"
        }
        # An announced size is the client's word: the bytes that arrive count.
        lie = b"S" * 60
        assert c.post("/put_file", json=meta(lie, filepath="/q/lie", file_size=1)).status_code == 201
        r = c.post(f"/upload_file/{sha(lie)}", content=lie)
        assert r.status_code == 413
        assert r.json() == {
            "detail": "This API key's quota of 50 bytes has 10 left (40 stored): "
            "too little for an upload of over 10 bytes"
        }
    with api.http() as admin:
        listed = {k["_id"]: k for k in admin.get("/api_keys").json()}
        for unstored in (late, lie):
            assert admin.get(f"/get_file/{sha(unstored)}").json()["has_file_content"] is False
            assert admin.get(f"/content/{sha(unstored)}").status_code == 404
    assert {f: listed[files_key["_id"]][f] for f in ("max_files", "max_bytes", "used_files", "used_bytes")} == {
        "max_files": 2,
        "max_bytes": None,
        "used_files": 2,
        "used_bytes": 80,
    }
    assert {f: listed[bytes_key["_id"]][f] for f in ("max_files", "max_bytes", "used_files", "used_bytes")} == {
        "max_files": None,
        "max_bytes": 50,
        "used_files": 2,
        "used_bytes": 40,
    }
    assert listed[files_key["_id"]]["hostnames"] is None and listed[files_key["_id"]]["path_prefixes"] is None


def test_batch_uploads_stop_at_the_quota_part_by_part(backend_api: Api) -> None:
    api = backend_api
    parts = [b"first part\n", b"second part\n", b"third\n"]
    with api.http() as admin:
        for n, data in enumerate(parts):
            assert admin.post("/put_file", json=meta(data, filepath=f"/b/{n}")).status_code == 201
    key = _key(api, scopes=["write"], max_files=2, max_bytes=len(parts[0]) + len(parts[2]))
    with api.http(key=key["api_key"]) as c:
        r = c.post("/upload_files", files=[(sha(d), ("f", d)) for d in parts])
    assert r.status_code == 200
    assert [f["status"] for f in r.json()["files"]] == ["uploaded", "quota_exceeded", "uploaded"]
    with api.http() as admin:
        assert admin.get(f"/content/{sha(parts[1])}").status_code == 404  # refused: not stored
        usage = next(k for k in admin.get("/api_keys").json() if k["_id"] == key["_id"])
    assert (usage["used_files"], usage["used_bytes"]) == (2, len(parts[0]) + len(parts[2]))


def test_uploads_at_once_do_not_overshoot_a_quota(backend_api: Api) -> None:
    """Uploads of one key running side by side are counted as they go: exactly max_files stored."""
    api = backend_api
    contents = [f"concurrent {n}\n".encode() * 1000 for n in range(12)]
    with api.http() as admin:
        files = [meta(data, filepath=f"/c/{n}") for n, data in enumerate(contents)]
        assert admin.post("/put_files", json={"files": files}).status_code == 201
    key = _key(api, scopes=["write"], max_files=3, max_bytes=10**9)

    def upload(data: bytes) -> int:
        with api.http(key=key["api_key"]) as c:
            return c.post(f"/upload_file/{sha(data)}", content=data).status_code

    with ThreadPoolExecutor(len(contents)) as pool:
        codes = list(pool.map(upload, contents))
    assert sorted(codes) == [200] * 3 + [413] * 9
    with api.http() as admin:
        usage = next(k for k in admin.get("/api_keys").json() if k["_id"] == key["_id"])
        stored = [d for d in contents if admin.get(f"/content/{sha(d)}").status_code == 200]
    assert (usage["used_files"], len(stored)) == (3, 3)
    assert usage["used_bytes"] == sum(len(d) for d in stored)


@pytest.mark.parametrize(
    "fields",
    [
        {"hostnames": []},
        {"hostnames": [""]},
        {"hostnames": ["x" * 256]},
        {"hostnames": [f"node-{n}" for n in range(101)]},
        {"hostnames": "node-a"},
        {"path_prefixes": []},
        {"path_prefixes": [""]},
        {"path_prefixes": ["var/log"]},
        {"path_prefixes": ["/var/\u0000"]},
        {"path_prefixes": [f"/p{n}" for n in range(101)]},
        {"max_bytes": 0},
        {"max_bytes": -5},
        {"max_bytes": "100"},
        {"max_files": True},
        {"max_files": 2**63},
        {"max_files": 1.5},
    ],
)
def test_bad_limits_are_refused(api: Api, fields: dict[str, Any]) -> None:
    with api.http() as admin:
        r = admin.post("/api_keys", json={"name": "bad", **fields})
        assert r.status_code == 422, (fields, r.text)
        assert isinstance(r.json()["detail"], list) and r.json()["detail"][0]["loc"][1] == next(iter(fields))
        assert all(k["name"] != "bad" for k in admin.get("/api_keys").json())
