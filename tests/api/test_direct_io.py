"""``DirectWrites``: the bytes land where they belong however they arrive, with a block always
in flight to the disk while the next is filled; what direct I/O wrote is read back intact."""

from __future__ import annotations

import hashlib
import mmap
import os
from pathlib import Path

import pytest

from putplace_api.storage import direct_io
from putplace_api.storage.direct_io import DIRECT_BLOCK, DirectWrites, read_blocks


def _pieces(data: bytes, sizes: list[int]) -> list[bytes]:
    out, at, i = [], 0, 0
    while at < len(data):
        out.append(data[at : at + sizes[i % len(sizes)]])
        at += sizes[i % len(sizes)]
        i += 1
    return out


@pytest.mark.parametrize("offset", [0, 3 * mmap.PAGESIZE, 1000])  # 1000: not aligned, so buffered
def test_many_blocks_in_odd_pieces_land_at_their_offset(tmp_path: Path, offset: int) -> None:
    data = os.urandom(5 * DIRECT_BLOCK + 4321)  # the first block, four handed to the disk threads, a tail
    path = tmp_path / "f"
    path.write_bytes(b"\xee" * offset)
    writer = DirectWrites(path, os.O_WRONLY, offset, writeback=True)
    try:
        for piece in _pieces(data, [1, 777_777, DIRECT_BLOCK, 3 * DIRECT_BLOCK // 2, 65_536]):
            writer.write(piece)
        writer.finish()
    finally:
        writer.close()
    assert path.read_bytes() == b"\xee" * offset + data
    digest = hashlib.sha256()
    for view in read_blocks(path):
        digest.update(view)
    assert digest.hexdigest() == hashlib.sha256(b"\xee" * offset + data).hexdigest()


def test_a_failed_write_in_flight_is_raised_and_close_still_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error of a block written in the background surfaces at the next write or at
    finish(), never lost; close() waits for the write before closing the descriptor. (A
    real full disk: tests/faults/test_storage_full.py; here EIO, which cannot be had.)"""
    real_pwrite = os.pwrite
    calls = []

    def failing_pwrite(fd: int, data: memoryview, offset: int) -> int:
        calls.append(offset)
        if offset >= 2 * DIRECT_BLOCK:
            raise OSError(5, "Input/output error")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(direct_io.os, "pwrite", failing_pwrite)
    path = tmp_path / "f"
    writer = DirectWrites(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0, writeback=True)
    block = os.urandom(DIRECT_BLOCK)
    with pytest.raises(OSError, match="Input/output error"):
        for _ in range(6):
            writer.write(block)
        writer.finish()
    assert calls == [DIRECT_BLOCK, 2 * DIRECT_BLOCK]  # block 0 at once, 1 fine, 2 failed: no more sent
    fd = writer.fd
    writer.close()
    writer.close()
    with pytest.raises(OSError):
        os.fstat(fd)


@pytest.mark.parametrize("short", [3 * mmap.PAGESIZE + 512, 512])  # counts of 512-byte sectors
def test_a_short_write_in_flight_goes_on_from_an_aligned_byte_or_reports_no_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short: int
) -> None:
    """Direct I/O takes aligned pieces only, so after a short write (a filesystem running out
    of room: injected here, as the count a kernel returns) the rest must not be sent from an
    unaligned byte, which Linux would refuse with a misleading EINVAL."""
    real_pwrite = os.pwrite
    cut = []

    def short_once(fd: int, data: memoryview, offset: int) -> int:
        if not cut:
            cut.append(offset)
            # the aligned part really written; the count says one sector more (a kernel with
            # 512-byte sectors may answer so), which the writer must write again
            if short >= mmap.PAGESIZE:
                real_pwrite(fd, data[: short - short % mmap.PAGESIZE], offset)
            return short
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(direct_io.os, "pwrite", short_once)
    data = os.urandom(3 * DIRECT_BLOCK + 10)
    path = tmp_path / "f"
    writer = DirectWrites(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0, writeback=True)
    try:
        if short < mmap.PAGESIZE:
            with pytest.raises(OSError, match="No space left"):
                writer.write(data)
                writer.finish()
            return
        writer.write(data)
        writer.finish()
    finally:
        writer.close()
    assert cut == [DIRECT_BLOCK]
    assert path.read_bytes() == data
