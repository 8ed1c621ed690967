"""Local content storage on a full filesystem (a small tmpfs): uploads get a clear 503, no
partial object (nor pack: a batch upload's pack runs out of space partway) appears and no temp
file is left behind; once space returns, the same uploads succeed. Mounting needs root (as in
CI); without it the test fails, it does not skip."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import meta
from tests.faults.integrity import assert_intact, local_objects, sha
from tests.processes import ApiProcess


def _tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size``, unmounted whatever happens."""
    if os.geteuid() != 0:
        pytest.fail(f"this test mounts a {size} tmpfs and must run as root", pytrace=False)
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from _tmpfs(tmp_path, "2m")


@pytest.fixture
def larger_disk(tmp_path: Path) -> Iterator[Path]:
    """Room for a few direct-I/O blocks (tmpfs takes O_DIRECT since Linux 6.6)."""
    yield from _tmpfs(tmp_path, "24m")


def fill(disk: Path, leave: int) -> Path:
    """A ballast file that leaves about ``leave`` bytes free on ``disk``."""
    st = os.statvfs(disk)
    ballast = disk / "ballast"
    ballast.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return ballast


def upload(c: httpx.Client, data: bytes, path: str) -> httpx.Response:
    r = c.post("/put_file", json=meta(data, filepath=path))
    assert r.status_code == 201 and r.json()["upload_required"], r.text
    return c.post(f"/upload_file/{sha(data)}", content=data)


def batch(c: httpx.Client, parts: dict[str, bytes]) -> httpx.Response:
    for path, data in parts.items():
        assert c.post("/put_file", json=meta(data, filepath=path)).status_code == 201
    return c.post("/upload_files", files=[(sha(d), (sha(d), d, "application/octet-stream")) for d in parts.values()])


def test_a_full_disk_is_a_clean_503_and_uploads_succeed_once_space_returns(
    small_disk: Path, start_api: Callable[..., ApiProcess]
) -> None:
    root = small_disk / "content"
    api = start_api(PUTPLACE_STORAGE_URL=root.as_uri())
    before = b"stored before the disk filled\n" * 1000
    big = b"a streamed upload that runs out of space partway\n" * 22_000  # 1.1 MB: two write blocks
    parts = {f"/batch/{i}": f"batch part {i}\n".encode() * 8_000 for i in range(3)}  # ~100 KB each
    with api.http() as c:
        assert upload(c, before, "/before").status_code == 200
        ballast = fill(small_disk, leave=256 * 1024)

        r = upload(c, big, "/big")  # part of it fits, the rest does not
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.json() == {"detail": "storage unavailable: no space left on device"}
        r = batch(c, parts)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "no space left" in r.json()["detail"]
        assert local_objects(root).keys() == {sha(before)}  # nothing partial under a final name
        assert list((root / ".tmp").iterdir()) == []  # and no temp file left to fill the disk further
        assert c.get(f"/get_file/{sha(big)}").json()["has_file_content"] is False

        ballast.unlink()
        assert c.post(f"/upload_file/{sha(big)}", content=big).status_code == 200
        r = batch(c, parts)
        assert r.status_code == 200 and {f["status"] for f in r.json()["files"]} == {"uploaded"}, r.text

    expected = {("node-1", p): sha(d) for p, d in {"/before": before, "/big": big, **parts}.items()}
    assert_intact(api, expected, partial(local_objects, root))
    assert list((root / ".tmp").iterdir()) == []
    api.stop()  # before the tmpfs goes


def test_a_disk_filling_up_under_a_block_written_in_the_background_is_a_clean_503(
    larger_disk: Path, start_api: Callable[..., ApiProcess]
) -> None:
    """A large upload's blocks go to the disk on a thread while the next one is filled: the
    block that finds no space fails there, and the upload still ends in a 503 with nothing
    partial left; once space returns, the same upload succeeds."""
    root = larger_disk / "content"
    api = start_api(PUTPLACE_STORAGE_URL=root.as_uri())
    big = os.urandom(1 << 20) * 16 + b"tail"  # four 4 MiB blocks and a tail
    with api.http() as c:
        ballast = fill(larger_disk, leave=10 << 20)  # the first two blocks fit, the third does not
        r = upload(c, big, "/big")
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.json() == {"detail": "storage unavailable: no space left on device"}
        assert local_objects(root) == {}
        assert list((root / ".tmp").iterdir()) == []

        ballast.unlink()
        assert c.post(f"/upload_file/{sha(big)}", content=big).status_code == 200
    assert_intact(api, {("node-1", "/big"): sha(big)}, partial(local_objects, root))
    assert list((root / ".tmp").iterdir()) == []
    api.stop()  # before the tmpfs goes
