"""Walking a tree: which entries to catalogue, and which of them changed since the index saw them.

Pure and blocking (``os.scandir`` + ``lstat``); the agent runs it in a thread. Regular files
and symlinks are catalogued; directories are descended (never through a symlink, never into a
pseudo filesystem); sockets, FIFOs and devices are skipped.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterator
from fnmatch import fnmatchcase
from pathlib import PurePosixPath

from putplace_agent.index import Signature

__all__ = ["Changed", "Excluder", "is_catalogued", "pseudo_mounts", "scan", "signature_of"]

log = logging.getLogger(__name__)

# Filesystems whose "files" are kernel state, not content: never descend into them.
PSEUDO_FILESYSTEMS = frozenset(
    {
        "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "securityfs", "debugfs", "tracefs",
        "configfs", "fusectl", "pstore", "bpf", "mqueue", "hugetlbfs", "binfmt_misc", "autofs", "nsfs",
        "efivarfs", "selinuxfs", "rpc_pipefs",
    }
)  # fmt: skip


def pseudo_mounts(mounts_file: str = "/proc/self/mounts") -> frozenset[str]:
    try:
        with open(mounts_file) as f:
            lines = f.read().splitlines()
    except OSError:
        return frozenset()
    points = set()
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[2] in PSEUDO_FILESYSTEMS:
            # /proc/mounts escapes spaces and the like as octal: \040
            points.add(parts[1].encode().decode("unicode_escape"))
    return frozenset(points)


class Excluder:
    """``--exclude`` globs, as the original PutPlace client applied them: a pattern excludes a path
    when it matches the path relative to its tree, or any single component of it."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = [p.rstrip("/") for p in patterns if p.strip("/")]

    def __call__(self, relative: str) -> bool:
        if not self.patterns:
            return False
        parts = PurePosixPath(relative).parts
        return any(fnmatchcase(relative, p) or any(fnmatchcase(part, p) for part in parts) for p in self.patterns)


def signature_of(st: os.stat_result) -> Signature:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def is_catalogued(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)


Changed = tuple[bytes, int]  # a path (as bytes) and its size


def scan(
    root: str,
    known: dict[bytes, Signature],
    *,
    excluded: Excluder,
    skip: frozenset[str] = frozenset(),
    follow_symlinks: bool = False,
    on_error: Callable[[str, OSError], None] = lambda path, exc: None,
    batch: int = 2048,
) -> Iterator[tuple[int, list[Changed]]]:
    """Walk ``root`` (or ``root`` itself, if it is a file), depth first, and compare every
    catalogued entry with ``known``, the index's signatures. Yields ``(seen, changed)`` per
    chunk of about ``batch`` entries; every path seen is removed from ``known``, so what is left
    afterwards is gone from disk.

    A no-change rescan is this loop and nothing else, so it stays lean: the walk runs on bytes
    (the index's keys, no encoding per entry), an unchanged entry makes no object, and the
    excluder is not even called when there are no patterns."""
    pop = known.pop
    out: list[Changed] = []
    seen = 0
    try:
        st = os.lstat(root)
    except OSError as exc:
        on_error(root, exc)
        return
    if not stat.S_ISDIR(st.st_mode):
        if is_catalogued(st):
            path = os.fsencode(root)
            if pop(path, None) != signature_of(st):
                out.append((path, st.st_size))
            yield 1, out
        return
    is_reg, is_lnk = stat.S_ISREG, stat.S_ISLNK
    skipped = frozenset(os.fsencode(s) for s in skip)
    patterns = excluded if excluded.patterns else None
    root_len = len(os.fsencode(root.rstrip("/"))) + 1
    stack = [os.fsencode(root)]
    while stack:
        directory = stack.pop()
        if directory in skipped:
            continue
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError as exc:
            on_error(os.fsdecode(directory), exc)
            continue
        for entry in entries:
            path = entry.path
            if patterns is not None and patterns(os.fsdecode(path[root_len:])):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(path)
                    continue
                st = entry.stat(follow_symlinks=False)
                mode = st.st_mode
                if follow_symlinks and is_lnk(mode):
                    st = entry.stat(follow_symlinks=True)  # a dangling link raises: not catalogued
                    mode = st.st_mode
            except OSError as exc:  # vanished between readdir and stat, or unreadable
                if not isinstance(exc, FileNotFoundError):
                    on_error(os.fsdecode(path), exc)
                continue
            if not (is_reg(mode) or is_lnk(mode)):
                continue
            seen += 1
            if pop(path, None) != (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino):
                out.append((path, st.st_size))
        if seen >= batch:
            yield seen, out
            seen, out = 0, []
    if seen:
        yield seen, out
