"""Bad input and bad conditions: each gets a clear 4xx/503 JSON answer, never a 500,
and never a partial or wrong object in storage."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.api.conftest import Api, meta, s3_settings, sha
from tests.servers import ferretdb, seaweedfs
from tests.servers.base import make_workdir


def _objects(api: Api) -> list[Path]:
    root = Path(api.settings.data_dir) / "content"
    return [p for p in root.rglob("*") if p.is_file() and ".tmp" not in p.parts]


def _temps(api: Api) -> list[Path]:
    return list((Path(api.settings.data_dir) / "content" / ".tmp").iterdir())


@pytest.mark.parametrize("bad", ["A" * 64, "a" * 63, "a" * 65, "g" * 64, "not-a-hash", "a" * 63 + "\u00e9"])
def test_malformed_sha_in_path_is_400(api: Api, bad: str) -> None:
    with api.http() as c:
        for r in (
            c.post(f"/upload_file/{bad}", files={"file": ("f", b"x")}),
            c.get(f"/get_file/{bad}"),
            c.get(f"/content/{bad}"),
        ):
            assert r.status_code == 400, (bad, r.status_code, r.text)
            assert "SHA256" in r.json()["detail"]


@pytest.mark.parametrize(
    "field,value",
    [
        ("sha256", "A" * 64),
        ("sha256", "a" * 63),
        ("sha256", ""),
        ("file_size", -1),
        ("file_size", 2**64),
        ("file_mode", -5),
        ("file_mtime", "yesterday"),
        ("filepath", ""),
        ("filepath", "/tmp/a\x00b"),
        ("filepath", "/" + "a" * 5000),
        ("hostname", ""),
        ("hostname", "h\x00"),
    ],
)
def test_invalid_metadata_is_422(api: Api, field: str, value: object) -> None:
    with api.http() as c:
        r = c.post("/put_file", json=meta() | {field: value})
    assert r.status_code == 422, r.text
    assert any(err["loc"][-1] == field for err in r.json()["detail"])


def test_missing_fields_and_non_finite_numbers_are_422(api: Api) -> None:
    with api.http() as c:
        body = meta()
        del body["file_gid"]
        assert c.post("/put_file", json=body).status_code == 422
        raw = json.dumps(meta()).replace("1700000000.5", "NaN", 1)
        r = c.post("/put_file", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422
        assert (
            c.post("/put_file", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
        )
        assert c.post("/put_files", json={"files": []}).status_code == 422


def test_non_utf8_file_names_are_stored_escaped_and_flagged(api: Api) -> None:
    # What a Python client sends for b"/data/caf\xe9": json.dumps of os.fsdecode's surrogate escape.
    raw = json.dumps(meta(filepath="/data/caf\udce9", hostname="n\udcff"))
    assert "\\udce9" in raw
    with api.http() as c:
        r = c.post("/put_file", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 201, r.text
        byte = r.json()
        assert (byte["filepath"], byte["filepath_escaped"], byte["hostname"]) == ("/data/caf\\xe9", True, "n\\xff")
        # The escaped form with the flag names the same file; without it, the text \xe9: another.
        again = c.post(
            "/put_file", json=meta(filepath="/data/caf\\xe9", hostname="n\\xff") | {"filepath_escaped": True}
        )
        assert again.json()["_id"] == byte["_id"]
        literal = c.post("/put_file", json=meta(filepath="/data/caf\\xe9", hostname="n\\xff")).json()
        assert literal["_id"] != byte["_id"] and literal["filepath_escaped"] is False
        listed = c.get("/files", params={"hostname": "n\\xff"}).json()["items"]
        assert sorted((f["filepath"], f["filepath_escaped"]) for f in listed) == [
            ("/data/caf\\xe9", False),
            ("/data/caf\\xe9", True),
        ]
        # An escaped form of valid UTF-8 is the plain name; hex digits are read in either case.
        plain = c.post(
            "/put_file", json=meta(filepath="/data/caf\\xC3\\xA9", hostname="n") | {"filepath_escaped": True}
        )
        assert (plain.json()["filepath"], plain.json()["filepath_escaped"]) == ("/data/café", False)
        # Valid UTF-8 names are kept exactly.
        r = c.post("/put_file", json=meta(filepath="/données/日本語 ✓"))
        assert (r.json()["filepath"], r.json()["filepath_escaped"]) == ("/données/日本語 ✓", False)


@pytest.mark.parametrize("bad", ["/a\\q", "/a\\", "/a\\x4", "/a\\xzz", "/a\udce9"])
def test_a_malformed_escaped_name_is_refused_clearly(api: Api, bad: str) -> None:
    with api.http() as c:
        r = c.post(
            "/put_file",
            content=json.dumps(meta(filepath=bad) | {"filepath_escaped": True}),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 422, r.text
        assert "filepath" in json.dumps(r.json()["detail"])
        if "\udce9" in bad:
            return  # no URL carries a lone surrogate
        for response in (
            c.delete("/files", params={"hostname": "h", "filepath": bad, "filepath_escaped": "true"}),
            c.get("/files/history", params={"hostname": "h", "filepath": bad, "filepath_escaped": "true"}),
            c.get("/files", params={"path_prefix": bad, "path_prefix_escaped": "true"}),
        ):
            assert response.status_code == 400, response.text
            assert "not a valid escaped name" in response.json()["detail"]
        r = c.delete("/files", params={"hostname": "h", "filepath": "/a", "filepath_escaped": "maybe"})
        assert r.status_code == 422


def test_hash_mismatch_stores_nothing(api: Api) -> None:
    body = meta(b"the announced content")
    with api.http() as c:
        c.post("/put_file", json=body)
        r = c.post(f"/upload_file/{body['sha256']}", files={"file": ("f", b"something else")})
        assert r.status_code == 400
        assert r.json() == {
            "detail": f"File content SHA256 ({sha(b'something else')}) does not match provided hash ({body['sha256']})"
        }
        assert c.post("/put_file", json=body).json()["upload_required"] is True
        assert c.get(f"/content/{body['sha256']}").status_code == 404
    assert _objects(api) == [] and _temps(api) == []


def test_wrong_bytes_for_content_already_stored_are_refused_and_change_nothing(backend_api: Api) -> None:
    """A client that sends the wrong bytes learns it, whether or not the server holds the right
    ones: the same 400 as for content not yet stored (the original PutPlace server's answer)."""
    data = b"the stored content"
    body = meta(data)
    with backend_api.http() as c:
        c.post("/put_file", json=body)
        assert c.post(f"/upload_file/{body['sha256']}", files={"file": ("f", data)}).status_code == 200
        for wrong in (b"the stored contenT", b"the stored", data + b" and more", b""):
            r = c.post(
                f"/upload_file/{body['sha256']}", content=wrong, headers={"content-type": "application/octet-stream"}
            )
            assert r.status_code == 400, (wrong, r.text)
            assert r.json()["detail"].endswith(f"does not match provided hash ({body['sha256']})"), r.json()
        same_length = c.post(f"/upload_file/{body['sha256']}", files={"file": ("f", b"the stored contenT")})
        assert same_length.json()["detail"] == (
            f"File content SHA256 ({sha(b'the stored contenT')}) does not match provided hash ({body['sha256']})"
        )
        assert c.get(f"/content/{body['sha256']}").content == data  # the stored content is untouched
        again = c.post(f"/upload_file/{body['sha256']}", files={"file": ("f", data)})
        assert again.status_code == 200 and again.json()["size"] == str(len(data))


def test_upload_of_a_sha_never_announced_is_404_and_stores_nothing(api: Api) -> None:
    data = b"never announced"
    with api.http() as c:
        r = c.post(f"/upload_file/{sha(data)}", files={"file": ("f", data)})
    assert r.status_code == 404 and sha(data) in r.json()["detail"]
    assert _objects(api) == [] and _temps(api) == []


def test_oversize_upload_is_413(start_api: Callable[..., Api]) -> None:
    api = start_api(max_upload_bytes=100)
    big, small = b"b" * 101, b"s" * 50
    with api.http() as c:
        c.post("/put_file", json=meta(big, filepath="/big"))
        r = c.post(f"/upload_file/{sha(big)}", files={"file": ("f", big)})
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        # A client that under-declares file_size is caught while streaming.
        liar = b"l" * 500
        c.post("/put_file", json=meta(liar, file_size=10, filepath="/liar"))
        r = c.post(f"/upload_file/{sha(liar)}", content=liar, headers={"content-type": "application/octet-stream"})
        assert r.status_code == 413
        c.post("/put_file", json=meta(small, filepath="/small"))
        assert c.post(f"/upload_file/{sha(small)}", files={"file": ("f", small)}).status_code == 200
    assert len(_objects(api)) == 1 and _temps(api) == []


def test_huge_json_bodies_are_413(start_api: Callable[..., Api]) -> None:
    api = start_api(max_request_bytes=64 * 1024)
    files = [meta(f"{i}".encode(), filepath=f"/f/{i}") for i in range(1000)]
    with api.http() as c:
        r = c.post("/put_files", json={"files": files})
        assert r.status_code == 413 and "larger than" in r.json()["detail"]

        def chunked() -> bytes:  # no Content-Length: the limit must hold while reading
            return json.dumps({"files": files}).encode()

        r = c.post("/put_files", content=iter([chunked()]), headers={"content-type": "application/json"})
        assert r.status_code == 413


def test_malformed_multipart_is_400(api: Api) -> None:
    data = b"multipart"
    body = meta(data)
    with api.http() as c:
        c.post("/put_file", json=body)
        url = f"/upload_file/{body['sha256']}"
        r = c.post(url, files={"other": ("f", data)})
        assert r.status_code == 400 and "'file'" in r.json()["detail"]
        r = c.post(url, content=b"garbage", headers={"content-type": "multipart/form-data"})
        assert r.status_code == 400
        r = c.post(url, content=b"--xyz\r\ngarbage", headers={"content-type": "multipart/form-data; boundary=xyz"})
        assert r.status_code == 400
    assert _objects(api) == [] and _temps(api) == []


def test_mime_allow_list_is_415(start_api: Callable[..., Api]) -> None:
    api = start_api(allowed_mime_types="text/plain,image/*")
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    pdf = b"%PDF-1.4\n" + b"\x00" * 64
    with api.http() as c:
        for data, status in ((b"plain text\n", 200), (png, 200), (pdf, 415)):
            c.post("/put_file", json=meta(data, filepath=f"/{status}/{len(data)}"))
            r = c.post(f"/upload_file/{sha(data)}", files={"file": ("f", data)})
            assert r.status_code == status, (data[:8], r.text)
    assert len(_objects(api)) == 2 and _temps(api) == []


def test_client_disconnecting_mid_upload_leaves_nothing(api: Api) -> None:
    data = b"d" * (4 * 1024 * 1024)
    body = meta(data)
    with api.http() as c:
        c.post("/put_file", json=body)
    host = urlsplit(api.url)
    with socket.create_connection((host.hostname, host.port)) as s:
        s.sendall(
            (
                f"POST /upload_file/{body['sha256']} HTTP/1.1\r\nHost: x\r\nX-API-Key: {api.admin_key}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n"
            ).encode()
            + data[: len(data) // 2]
        )
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while _temps(api) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _temps(api) == [] and _objects(api) == []
    with api.http() as c:
        assert c.post("/put_file", json=body).json()["upload_required"] is True
        r = c.post(f"/upload_file/{body['sha256']}", content=data, headers={"content-type": "application/octet-stream"})
        assert r.status_code == 200


def test_two_clients_uploading_the_same_sha_at_once(api: Api) -> None:
    data = b"race" * 500_000
    body = meta(data)
    with api.http() as c:
        c.post("/put_file", json=body)
    results: list[int] = []

    def upload() -> None:
        with api.http() as c:
            r = c.post(
                f"/upload_file/{body['sha256']}", content=data, headers={"content-type": "application/octet-stream"}
            )
            results.append(r.status_code)

    threads = [threading.Thread(target=upload) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 4
    assert len(_objects(api)) == 1 and _objects(api)[0].read_bytes() == data
    assert _temps(api) == []


def test_database_down_is_503_and_health_degraded(tmp_path: Path, start_api: Callable[..., Api]) -> None:
    server = ferretdb.start(make_workdir("ferretdb", tmp_path))
    try:
        url = server.env["PUTPLACE_TEST_MONGODB_URL"].rstrip("/") + "/putplace_down"
        api = start_api(database_url=url, database_timeout_seconds=1.0, retry_after_seconds=7)
        with api.http() as c:
            assert c.post("/put_file", json=meta()).status_code == 201
    finally:
        server.stop()
    with api.http() as c:
        r = c.post("/put_file", json=meta(b"later"))
        assert r.status_code == 503 and r.headers["retry-after"] == "7"
        assert "database unavailable" in r.json()["detail"]
        health = c.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "degraded"
        assert health.json()["database"] == {"status": "disconnected", "type": "mongodb"}
        assert c.get("/readyz").status_code == 503


def test_storage_down_is_503_and_health_degraded(tmp_path: Path, start_api: Callable[..., Api]) -> None:
    server = seaweedfs.start(make_workdir("seaweedfs", tmp_path))
    try:
        from tests.servers.s3 import S3Server

        s3 = S3Server.from_env("seaweedfs", server.env)
        api = start_api(**s3_settings(s3))
        data = b"stored before the outage"
        with api.http() as c:
            c.post("/put_file", json=meta(data))
            assert c.post(f"/upload_file/{sha(data)}", content=data).status_code == 200
    finally:
        server.stop()
    with api.http() as c:
        later = b"uploaded during the outage"
        assert c.post("/put_file", json=meta(later, filepath="/later")).status_code == 201
        r = c.post(f"/upload_file/{sha(later)}", content=later, headers={"content-type": "application/octet-stream"})
        assert r.status_code == 503 and "retry-after" in r.headers
        assert "storage unavailable" in r.json()["detail"]
        assert c.get("/health").json()["status"] == "degraded"
        assert c.get("/readyz").status_code == 503
        assert c.post("/put_file", json=meta(later, filepath="/later")).json()["upload_required"] is True


def test_unknown_routes_need_a_key_then_404(api: Api) -> None:
    assert httpx.get(f"{api.url}/nope").status_code == 401
    with api.http() as c:
        assert c.get("/nope").status_code == 404


def test_mismatch_found_at_the_end_of_a_multi_block_upload_stores_nothing(api: Api) -> None:
    from putplace_api.uploads import PIPELINE_BLOCKS, WRITE_BLOCK

    announced = bytes(range(256)) * (WRITE_BLOCK * (PIPELINE_BLOCKS + 1) // 256)
    sent = announced[:-1] + b"\x00"
    body = meta(announced)
    with api.http() as c:
        c.post("/put_file", json=body)
        r = c.post(f"/upload_file/{body['sha256']}", content=sent, headers={"content-type": "application/octet-stream"})
        assert r.status_code == 400 and sha(sent) in r.json()["detail"]
        ok = c.post(
            f"/upload_file/{body['sha256']}", content=announced, headers={"content-type": "application/octet-stream"}
        )
        assert ok.status_code == 200 and ok.json()["size"] == str(len(announced))
    assert [p.read_bytes() == announced for p in _objects(api)] == [True] and _temps(api) == []
