"""``POST /upload_files``: many small contents in one request, each part answered on its own."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import ADMIN_KEY, Api, meta, sha


def announce(api: Api, *contents: bytes) -> None:
    with api.http() as c:
        files = [meta(data, filepath=f"/f/{i}") for i, data in enumerate(contents)]
        r = c.post("/put_files", json={"files": files})
        assert r.status_code == 201, r.text


def upload(api: Api, parts: list[tuple[str, bytes]], key: str | None = ADMIN_KEY) -> httpx.Response:
    with api.http(key) as c:
        return c.post("/upload_files", files=[(name, (name, data, "application/octet-stream")) for name, data in parts])


def test_each_part_is_judged_on_its_own(backend_api: Api) -> None:
    good, corrupt, other, unknown = os.urandom(5000), os.urandom(6000), b"", os.urandom(10)
    announce(backend_api, good, corrupt, other)
    parts = [
        (sha(good), good),
        (sha(corrupt), corrupt[:-1] + bytes([corrupt[-1] ^ 1])),  # (b"X" was the last byte 1 time in 256)
        (sha(other), other),
        (sha(unknown), unknown),
        ("not-a-sha", b"whatever"),
        (sha(good), good),
    ]
    r = upload(backend_api, parts)
    assert r.status_code == 200, r.text
    statuses = [(f["sha256"], f["status"], f["size"]) for f in r.json()["files"]]
    assert statuses == [
        (sha(good), "uploaded", 5000),
        (sha(corrupt), "mismatch", 6000),
        (sha(other), "uploaded", 0),
        (sha(unknown), "not_announced", 10),
        ("not-a-sha", "invalid", 8),
        (sha(good), "uploaded", 5000),
    ]
    with backend_api.http() as c:
        assert c.get(f"/content/{sha(good)}").content == good
        empty = c.get(f"/content/{sha(other)}")
        assert (empty.content, empty.headers["content-type"]) == (b"", "application/x-empty")  # sniffed on read
        assert c.get(f"/content/{sha(corrupt)}").status_code == 404
        assert c.get(f"/get_file/{sha(corrupt)}").json()["has_file_content"] is False
        assert c.get(f"/get_file/{sha(good)}").json()["has_file_content"] is True
    again = upload(backend_api, [(sha(good), good), (sha(other), b"not empty")]).json()["files"]
    # stored already: the right bytes exist, the wrong ones are a mismatch all the same
    assert [(f["status"], f["size"]) for f in again] == [("exists", 5000), ("mismatch", 9)]
    with backend_api.http() as c:
        assert c.get(f"/content/{sha(other)}").content == b""


def test_a_batch_is_stored_as_one_pack_read_by_range(backend_api: Api) -> None:
    contents = [os.urandom(n) for n in (300, 0, 7000, 1)]
    announce(backend_api, *contents)
    r = upload(backend_api, [(sha(c), c) for c in contents])
    assert [f["status"] for f in r.json()["files"]] == ["uploaded"] * 4
    big = contents[2]
    with backend_api.http() as c:
        for data in contents:
            assert c.get(f"/content/{sha(data)}").content == data
        part = c.get(f"/content/{sha(big)}", headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == big[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(big)}"
        assert c.get(f"/content/{sha(big)}", headers={"Range": "bytes=-5"}).content == big[-5:]
        assert c.get(f"/content/{sha(big)}", headers={"Range": "bytes=7000-"}).status_code == 416
        paths = {c.get(f"/get_file/{sha(d)}").json()["storage_path"].split("#")[0] for d in contents}
    (pack,) = paths  # one pack for the whole batch, no object per content
    assert "/packs/" in pack
    if backend_api.settings.effective_storage_url.startswith("file://"):
        root = Path(backend_api.settings.data_dir) / "content"
        assert [p.relative_to(root).parts[0] for p in root.rglob("*") if p.is_file()] == ["packs"]


def test_limits_of_the_server_apply_per_part(start_api: Callable[..., Api]) -> None:
    api = start_api(max_upload_bytes=100, allowed_mime_types="image/png,text/plain")
    small, big, pdf = b"small text\n", b"x" * 101, b"%PDF-1.4\n" + b"\x00" * 50
    announce(api, small, big, pdf)
    r = upload(api, [(sha(small), small), (sha(big), big), (sha(pdf), pdf)])
    assert [f["status"] for f in r.json()["files"]] == ["uploaded", "too_large", "unsupported_type"]


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (lambda api: api.http().post("/upload_files", json={"a": 1}), 415),
        (lambda api: upload(api, [("a" * 64, b"")], key=None), 401),
        (lambda api: upload(api, [("a" * 64, b"")], key=api.new_key("read")), 403),
        (
            lambda api: api.http().post(
                "/upload_files", content=b"--x\r\nbroken", headers={"Content-Type": "multipart/form-data; boundary=x"}
            ),
            400,
        ),
        (
            lambda api: api.http().post(
                "/upload_files", content=b"--x--\r\n", headers={"Content-Type": "multipart/form-data; boundary=x"}
            ),
            400,
        ),
    ],
    ids=["not-multipart", "no-key", "read-key", "malformed", "no-parts"],
)
def test_bad_requests(api: Api, make: Callable[[Api], httpx.Response], status: int) -> None:
    r = make(api)
    assert r.status_code == status, r.text
    assert "detail" in r.json()


def test_a_body_over_the_request_cap_is_refused(start_api: Callable[..., Api]) -> None:
    api = start_api(max_request_bytes=64 * 1024)
    data = os.urandom(100_000)
    announce(api, data)
    r = upload(api, [(hashlib.sha256(data).hexdigest(), data)])
    assert r.status_code == 413, r.text
