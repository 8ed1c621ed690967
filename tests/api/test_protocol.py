"""The PutPlace wire protocol, as existing clients use it, against a real server."""

from __future__ import annotations

import time
from pathlib import Path

from tests.api.conftest import Api, meta, sha

FILE_FIELDS = {
    "filepath",
    "hostname",
    "ip_address",
    "sha256",
    "file_size",
    "file_mode",
    "file_uid",
    "file_gid",
    "file_mtime",
    "file_atime",
    "file_ctime",
}


def test_landing_page_names_the_product_and_links_docs(api: Api) -> None:
    with api.http(key=None) as c:
        r = c.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "PutPlace" in r.text and "File Metadata Storage" in r.text and 'href="/docs"' in r.text


def test_health_and_probes_need_no_key(api: Api) -> None:
    with api.http(key=None) as c:
        health = c.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "healthy"
        assert health.json()["database"] == {"status": "connected", "type": "sqlite"}
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").status_code == 200


def test_put_file_answers_201_with_the_original_fields(backend_api: Api) -> None:
    body = meta(b"content-1")
    with backend_api.http() as c:
        r = c.post("/put_file", json=body)
    assert r.status_code == 201, r.text
    out = r.json()
    assert {k: out[k] for k in FILE_FIELDS} == body
    assert len(out["_id"]) == 24 and isinstance(out["_id"], str)
    assert out["has_file_content"] is False
    assert out["file_uploaded_at"] is None and out["storage_path"] is None
    assert out["upload_required"] is True
    assert out["upload_url"] == f"/upload_file/{body['sha256']}"
    assert out["created_at"].endswith("Z") or "+00:00" in out["created_at"]


def test_server_owned_and_unknown_fields_are_ignored(backend_api: Api) -> None:
    body = meta(b"x") | {"has_file_content": True, "storage_path": "/etc/passwd", "_id": "evil", "colour": "red"}
    with backend_api.http() as c:
        out = c.post("/put_file", json=body).json()
    assert out["has_file_content"] is False and out["storage_path"] is None and out["_id"] != "evil"
    assert "colour" not in out


def test_two_phase_upload_multipart_as_the_original_client(backend_api: Api) -> None:
    data = b"two-phase content\n" * 100
    body = meta(data)
    with backend_api.http() as c:
        assert c.post("/put_file", json=body).json()["upload_required"] is True
        r = c.post(
            f"/upload_file/{body['sha256']}",
            params={"hostname": body["hostname"], "filepath": body["filepath"]},
            files={"file": ("app.log", data, "application/octet-stream")},
        )
        assert r.status_code == 200, r.text
        assert r.json() == {
            "message": "File uploaded successfully",
            "sha256": body["sha256"],
            "size": str(len(data)),
            "hostname": body["hostname"],
            "filepath": body["filepath"],
            "filepath_escaped": False,
            "status": "uploaded",
        }
        again = c.post("/put_file", json=body | {"hostname": "node-2"}).json()
        assert again["upload_required"] is False and again["upload_url"] is None
        assert again["has_file_content"] is True and again["file_uploaded_at"] is not None
        assert again["storage_path"].endswith(f"/{body['sha256'][:2]}/{body['sha256']}")
        assert c.get(f"/content/{body['sha256']}").content == data


def test_stored_object_lives_at_sha_prefix_path(api: Api) -> None:
    data = b"on disk"
    body = meta(data)
    with api.http() as c:
        c.post("/put_file", json=body)
        c.post(f"/upload_file/{body['sha256']}", content=data, headers={"content-type": "application/octet-stream"})
    path = Path(api.settings.data_dir) / "content" / body["sha256"][:2] / body["sha256"]
    assert path.read_bytes() == data


def test_empty_file_is_stored_too(backend_api: Api) -> None:
    body = meta(b"")
    with backend_api.http() as c:
        assert c.post("/put_file", json=body).json()["upload_required"] is True
        r = c.post(f"/upload_file/{body['sha256']}", files={"file": ("empty", b"")})
        assert r.status_code == 200 and r.json()["size"] == "0"
        assert c.post("/put_file", json=body).json()["upload_required"] is False
        assert c.get(f"/content/{body['sha256']}").content == b""


def test_upload_of_stored_content_is_200_without_rewrite(api: Api) -> None:
    data = b"already there"
    body = meta(data)
    path = Path(api.settings.data_dir) / "content" / body["sha256"][:2] / body["sha256"]
    with api.http() as c:
        c.post("/put_file", json=body)
        c.post(f"/upload_file/{body['sha256']}", files={"file": ("f", data)})
        first = path.stat().st_mtime_ns
        time.sleep(0.01)
        r = c.post(f"/upload_file/{body['sha256']}", files={"file": ("f", data)})
    assert r.status_code == 200 and r.json()["status"] == "uploaded"
    assert path.stat().st_mtime_ns == first


def test_one_current_record_per_path_with_history(backend_api: Api) -> None:
    v1, v2 = meta(b"version 1"), meta(b"version 2", file_mtime=1_700_000_100.0)
    with backend_api.http() as c:
        id1 = c.post("/put_file", json=v1).json()["_id"]
        same = c.post("/put_file", json=v1).json()
        assert same["_id"] == id1 and same["updated_at"] == same["created_at"]
        second = c.post("/put_file", json=v2).json()
        assert second["_id"] == id1 and second["sha256"] == v2["sha256"]
        page = c.get("/files", params={"hostname": "node-1"}).json()
        assert [f["sha256"] for f in page["items"]] == [v2["sha256"]]
        hist = c.get("/files/history", params={"hostname": "node-1", "filepath": v1["filepath"]}).json()
        assert [(h["sha256"], h["event"]) for h in hist["items"]] == [(v1["sha256"], "replaced")]


def test_get_file_by_sha(backend_api: Api) -> None:
    body = meta(b"lookup")
    with backend_api.http() as c:
        c.post("/put_file", json=body)
        r = c.get(f"/get_file/{body['sha256']}")
        assert r.status_code == 200 and r.json()["filepath"] == body["filepath"]
        missing = "0" * 64
        r = c.get(f"/get_file/{missing}")
        assert r.status_code == 404 and r.json() == {"detail": f"File with SHA256 {missing} not found"}


def test_content_download_ranges_etag_and_type(backend_api: Api) -> None:
    data = b"%PDF-1.4\n" + bytes(range(256)) * 40
    body = meta(data)
    h = body["sha256"]
    with backend_api.http() as c:
        c.post("/put_file", json=body)
        c.post(f"/upload_file/{h}", files={"file": ("doc.pdf", data)})
        full = c.get(f"/content/{h}")
        assert full.status_code == 200 and full.content == data
        assert full.headers["content-length"] == str(len(data))
        assert full.headers["etag"] == f'"{h}"'
        assert full.headers["content-type"] == "application/pdf"
        part = c.get(f"/content/{h}", headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == data[10:20]
        assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
        assert c.get(f"/content/{h}", headers={"Range": "bytes=-5"}).content == data[-5:]
        assert c.get(f"/content/{h}", headers={"Range": f"bytes={len(data) - 3}-"}).content == data[-3:]
        bad = c.get(f"/content/{h}", headers={"Range": f"bytes={len(data)}-"})
        assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(data)}"
        assert c.get(f"/content/{h}", headers={"If-None-Match": f'"{h}"'}).status_code == 304
        assert c.get(f"/content/{'1' * 64}").status_code == 404


def test_put_files_batch_gives_per_record_upload_required(backend_api: Api) -> None:
    stored = meta(b"stored", filepath="/a")
    with backend_api.http() as c:
        c.post("/put_file", json=stored)
        c.post(f"/upload_file/{stored['sha256']}", files={"file": ("a", b"stored")})
        batch = [meta(b"stored", filepath="/b")] + [meta(f"new {i}".encode(), filepath=f"/n/{i}") for i in range(50)]
        r = c.post("/put_files", json={"files": batch})
    assert r.status_code == 201, r.text
    files = r.json()["files"]
    assert [f["filepath"] for f in files] == [b["filepath"] for b in batch]
    assert [f["upload_required"] for f in files] == [False] + [True] * 50
    assert set(files[1]) == {
        "_id",
        "hostname",
        "filepath",
        "filepath_escaped",
        "sha256",
        "upload_required",
        "upload_url",
    }
    assert files[1]["upload_url"] == f"/upload_file/{batch[1]['sha256']}" and files[0]["upload_url"] is None


def test_listing_filters_and_cursor_pagination(backend_api: Api) -> None:
    with backend_api.http() as c:
        batch = [meta(f"{i}".encode(), hostname=f"node-{i % 2}", filepath=f"/data/{i:03}") for i in range(25)]
        batch.append(meta(b"other", hostname="node-0", filepath="/database/x"))
        c.post("/put_files", json={"files": batch})
        seen, cursor = [], None
        while True:
            params = {"hostname": "node-0", "path_prefix": "/data/", "limit": 4}
            if cursor:
                params["cursor"] = cursor
            page = c.get("/files", params=params).json()
            seen += [f["filepath"] for f in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == [f"/data/{i:03}" for i in range(0, 25, 2)]
        assert len(seen) == len(set(seen))
        every = c.get("/files", params={"sha256": batch[3]["sha256"]}).json()["items"]
        assert [f["filepath"] for f in every] == ["/data/003"]
        future = c.get("/files", params={"changed_since": "2999-01-01T00:00:00Z"}).json()["items"]
        assert future == []
        assert c.get("/files", params={"cursor": "not-a-cursor"}).status_code == 400


def test_delete_notice_keeps_history_and_content(backend_api: Api) -> None:
    data = b"to be deleted"
    body = meta(data)
    with backend_api.http() as c:
        c.post("/put_file", json=body)
        c.post(f"/upload_file/{body['sha256']}", files={"file": ("f", data)})
        r = c.delete("/files", params={"hostname": body["hostname"], "filepath": body["filepath"]})
        assert r.status_code == 200
        assert c.get("/files", params={"hostname": body["hostname"]}).json()["items"] == []
        hist = c.get("/files/history", params={"hostname": body["hostname"], "filepath": body["filepath"]}).json()
        assert [h["event"] for h in hist["items"]] == ["deleted"]
        assert c.get(f"/content/{body['sha256']}").content == data
        again = c.delete("/files", params={"hostname": body["hostname"], "filepath": body["filepath"]})
        assert again.status_code == 404


def test_stats_report_dedup(backend_api: Api) -> None:
    data = b"x" * 1000
    with backend_api.http() as c:
        for host in ("a", "b", "c"):
            c.post("/put_file", json=meta(data, hostname=host))
        c.post(f"/upload_file/{sha(data)}", files={"file": ("f", data)})
        s = c.get("/stats").json()
    assert s == {
        "files": 3,
        "hosts": 3,
        "contents_stored": 1,
        "stored_bytes": 1000,
        "logical_bytes": 3000,
        "dedup_ratio": 3.0,
    }


def test_request_id_is_returned_and_honoured(api: Api) -> None:
    with api.http(key=None) as c:
        assert len(c.get("/health").headers["x-request-id"]) == 32
        assert c.get("/health", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"


def test_metrics_need_a_metrics_scope_and_count_requests(api: Api) -> None:
    metrics_key = api.new_key("metrics")
    writer = api.new_key("write")
    with api.http(key=writer) as c:
        c.post("/put_file", json=meta(b"m"))
        assert c.get("/metrics").status_code == 403
    with api.http(key=None) as c:
        assert c.get("/files/current", params={"hostname": "h", "filepath": "/x"}).status_code == 401
        assert c.get("/no/such/route").status_code == 401
        r = c.get("/metrics", headers={"Authorization": f"Bearer {metrics_key}"})
    assert r.status_code == 200
    assert 'putplace_http_requests_total{method="POST",route="/put_file",status="201"}' in r.text
    # Refused before routing (no key), yet counted under the route it asked for.
    assert 'putplace_http_requests_total{method="GET",route="/files/current",status="401"}' in r.text
    assert 'putplace_http_requests_total{method="GET",route="unmatched",status="401"}' in r.text
    assert "putplace_backend_operation_duration_seconds_bucket" in r.text
    assert metrics_key not in r.text and writer not in r.text
