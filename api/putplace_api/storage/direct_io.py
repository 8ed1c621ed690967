"""Sequential writes to a local file with direct I/O (``O_DIRECT``) where the filesystem has it.

The bytes are copied once into an aligned block that the disk reads itself, instead of into
the page cache that an fsync must then write out. Measured for 2 GiB here: 0.2 s of CPU and
~1 s, against 3.4-6.7 s of CPU and 4.4-9.3 s buffered (docs/benchmarks.md). Where direct I/O
is refused (a filesystem without it: tmpfs before Linux 6.6, some network filesystems), the
writes are buffered and sent on to the disk as they go (every ``WRITEBACK_BYTES``), so that
the fsync that makes them durable finds little left to write.

Used by the content writer (one temp file per upload) and by upload sessions (each chunk at
its offset in the session's file): both write whole blocks from an aligned offset, and only
the last, partial block goes through the page cache.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

__all__ = ["DIRECT_BLOCK", "DirectWrites", "read_blocks", "write_all"]

DIRECT_BLOCK = 4 * 1024 * 1024  # a multiple of any logical block size; one write per block
WRITEBACK_BYTES = 16 * 1024 * 1024

# The threads that put full blocks on the disk, shared by every file being written (each has
# at most one write in flight). Beyond this many files at once, their writes queue here.
_DISK = ThreadPoolExecutor(max_workers=4, thread_name_prefix="putplace-disk")


def write_all(fd: int, view: memoryview) -> None:
    while view:  # os.write may write less than asked (a signal, a 2 GiB single write)
        view = view[os.write(fd, view) :]


class DirectWrites:
    """Writes one file from ``offset`` on, in order. ``offset`` must be a multiple of the page
    size for direct I/O (else the writes are buffered). Not thread-safe: one writer thread at
    a time, as the callers' pipelines guarantee.

    Direct I/O fills one aligned block while the block before it goes to the disk on a thread
    of ``_DISK`` (two blocks per file, one write in flight): copying a block and the disk's
    write of the previous one overlap instead of taking turns."""

    def __init__(self, path: Path, flags: int, offset: int, writeback: bool) -> None:
        self._writeback = writeback  # buffered: hand bytes to the disk early (an fsync follows)
        self._block: mmap.mmap | None = None  # direct I/O: the aligned block being filled
        self._spare: mmap.mmap | None = None  # direct I/O: the block in flight (made at the first hand-off)
        self._in_flight: Future[None] | None = None
        self._proven = False  # direct I/O: the first block's write was accepted
        self._filled = 0
        self._offset = offset  # direct I/O: where the block being filled goes in the file
        self.fd = self._open(path, flags, direct=offset % mmap.PAGESIZE == 0)
        if offset:
            os.lseek(self.fd, offset, os.SEEK_SET)
        self._written = self._sent_on = offset  # buffered: bytes written, and handed to the disk

    def _open(self, path: Path, flags: int, direct: bool) -> int:
        if direct:
            block = mmap.mmap(-1, DIRECT_BLOCK)  # page-aligned, as O_DIRECT wants
            try:
                fd = os.open(path, flags | os.O_DIRECT, 0o666)
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EINVAL: this filesystem has no direct I/O
                    raise
                if flags & os.O_CREAT:
                    path.unlink(missing_ok=True)
            else:
                self._block = block
                return fd
        return os.open(path, flags, 0o666)

    def _buffered(self) -> None:
        """Go on without direct I/O (the rest of a block, or a filesystem that refused it)."""
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        block, filled = self._block, self._filled
        self._block, self._spare, self._filled = None, None, 0
        os.lseek(self.fd, self._offset, os.SEEK_SET)  # what direct I/O wrote ends there
        self._written = self._sent_on = self._offset
        if block is not None:  # not closed: a view of it may live on in a traceback; the GC unmaps it
            self.write(memoryview(block)[:filled])

    def _wait(self) -> None:
        """The write in flight, done (its error, if any, raised here)."""
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            in_flight.result()

    def _hand_off(self) -> None:
        """The full block goes to the disk; the other one is filled meanwhile."""
        assert self._block is not None
        if not self._proven:
            # The first block is written here and now: a filesystem that takes O_DIRECT at
            # open but refuses its writes (EINVAL) is found while the block is still at hand.
            write_all(self.fd, memoryview(self._block))
            self._proven = True
            self._offset += DIRECT_BLOCK
            self._filled = 0
            return
        self._wait()  # the spare's previous write: done before it is filled again
        full = self._block
        self._in_flight = _DISK.submit(_write_at, self.fd, full, self._offset)
        self._offset += DIRECT_BLOCK
        self._block, self._spare = self._spare or mmap.mmap(-1, DIRECT_BLOCK), full
        self._filled = 0

    def write(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk)
        if self._block is not None:
            while view:
                n = min(len(view), DIRECT_BLOCK - self._filled)
                self._block[self._filled : self._filled + n] = view[:n]
                self._filled += n
                view = view[n:]
                if self._filled == DIRECT_BLOCK:
                    try:
                        self._hand_off()
                    except OSError as exc:
                        if exc.errno != errno.EINVAL or self._proven:
                            raise
                        self._buffered()  # opened with O_DIRECT, but writing with it refused
                        self.write(view)
                        return
            return
        write_all(self.fd, view)
        self._written += len(view)
        if self._writeback and self._written - self._sent_on >= WRITEBACK_BYTES:
            # Linux starts writing back the range it is told is not needed (only its clean pages
            # are dropped): the disk works while the body still arrives.
            os.posix_fadvise(self.fd, self._sent_on, self._written - self._sent_on, os.POSIX_FADV_DONTNEED)
            self._sent_on = self._written

    def finish(self) -> None:
        """Write what is left of the last block (direct I/O takes whole aligned blocks only)."""
        if self._block is not None:
            self._wait()
            self._buffered()

    def close(self) -> None:
        """Close the file, written or not (an abort); a second call does nothing."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):  # an abort: a write error no longer matters
                self._wait()  # never close the descriptor under a write in flight
            os.close(self.fd)
            self.fd = -1
        self._block = self._spare = None


def _write_at(fd: int, block: mmap.mmap, offset: int) -> None:
    view = memoryview(block)
    while view:
        written = os.pwrite(fd, view, offset)
        # A direct write comes back short only when the filesystem runs out of room (space,
        # quota, file size limit), and takes only aligned pieces: go on from the last aligned
        # byte written (rewriting the few after it), so that the next call reports the error.
        aligned = written - written % mmap.PAGESIZE
        if not aligned:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view, offset = view[aligned:], offset + aligned


def read_blocks(path: Path) -> Iterator[memoryview]:
    """The file's bytes, a block at a time, read with direct I/O where the filesystem has it
    (what was just written with it is not in the page cache: reading it through the cache would
    copy every byte once more). Each view is of one reused block: use it before the next."""
    block = mmap.mmap(-1, DIRECT_BLOCK)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            try:
                n = os.readv(fd, [block])
            except OSError as exc:
                if exc.errno != errno.EINVAL or not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
                    raise
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                continue  # refused at the first read: the same read, buffered
            if not n:
                return
            yield memoryview(block)[:n]
    finally:
        os.close(fd)
