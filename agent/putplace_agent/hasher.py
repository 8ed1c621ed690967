"""Hashing one file, safely: never a hash that does not match a single state of the file.

Pure and blocking; the agent calls it from a thread pool (hashlib releases the GIL on large
updates, so threads hash in parallel). A file whose signature changes while it is read raises
``FileChanged`` after a few attempts: the caller tries again later rather than announce a hash
of bytes that were never on disk together.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading

from putplace_agent.index import Entry
from putplace_agent.scanner import signature_of

__all__ = ["BLOCK", "FileChanged", "NotCatalogued", "hash_file"]

BLOCK = 1024 * 1024
_local = threading.local()


class FileChanged(Exception):
    """The file kept changing while it was hashed."""


class NotCatalogued(Exception):
    """The path is no longer a regular file or a symlink (a directory, FIFO, socket, device)."""


def _buffer() -> memoryview:
    buf: memoryview | None = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(BLOCK))
    return buf


def _entry(path: bytes, st: os.stat_result, sha256: str) -> Entry:
    return Entry(
        path=path,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        inode=st.st_ino,
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        atime_ns=st.st_atime_ns,
        sha256=sha256,
    )


def _hash_symlink(path: bytes) -> Entry:
    # A symlink is catalogued as itself: its content is the target path (as git stores links).
    before = os.lstat(path)
    target = os.readlink(path)
    after = os.lstat(path)
    if signature_of(before) != signature_of(after) or not stat.S_ISLNK(after.st_mode):
        raise FileChanged(os.fsdecode(path))
    return _entry(path, after, hashlib.sha256(target).hexdigest())


def _hash_regular(path: bytes, follow_symlinks: bool) -> Entry:
    if follow_symlinks and not stat.S_ISREG(os.stat(path).st_mode):
        # A link to a FIFO or a device is not opened at all (opening one may block or act).
        raise NotCatalogued(os.fsdecode(path))
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:  # became a symlink since the scan
            raise FileChanged(os.fsdecode(path)) from None
        raise  # following links, ELOOP is a loop of links: unreadable, not changing
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise NotCatalogued(os.fsdecode(path))
        if before.st_size > BLOCK:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        digest = hashlib.sha256()
        buf = _buffer()
        total = 0
        while n := os.readv(fd, [buf]):
            digest.update(buf[:n])
            total += n
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if total != after.st_size or signature_of(before) != signature_of(after):
        raise FileChanged(os.fsdecode(path))
    return _entry(path, after, digest.hexdigest())


def hash_file(path: bytes, *, follow_symlinks: bool = False, attempts: int = 3) -> Entry:
    """Hash ``path`` as it is now. Raises OSError (unreadable, vanished), NotCatalogued or FileChanged."""
    for attempt in range(attempts):
        try:
            if not follow_symlinks and stat.S_ISLNK(os.lstat(path).st_mode):
                return _hash_symlink(path)
            return _hash_regular(path, follow_symlinks)
        except FileChanged:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
