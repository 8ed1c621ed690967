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
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import PurePosixPath

from putplace_agent.index import Signature

__all__ = ["Excluder", "Found", "pseudo_mounts", "signature_of", "walk", "changed"]

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


@dataclass(frozen=True, slots=True)
class Found:
    path: str
    stat: os.stat_result


def signature_of(st: os.stat_result) -> Signature:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def is_catalogued(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)


def walk(
    root: str,
    *,
    excluded: Excluder,
    skip: frozenset[str] = frozenset(),
    follow_symlinks: bool = False,
    on_error: Callable[[str, OSError], None] = lambda path, exc: None,
) -> Iterator[Found]:
    """Every catalogued entry under ``root`` (or ``root`` itself, if it is a file), depth first."""
    try:
        st = os.lstat(root)
    except OSError as exc:
        on_error(root, exc)
        return
    if not stat.S_ISDIR(st.st_mode):
        if is_catalogued(st):
            yield Found(root, st)
        return
    root_len = len(root.rstrip("/")) + 1
    stack = [root]
    while stack:
        directory = stack.pop()
        if directory in skip:
            continue
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError as exc:
            on_error(directory, exc)
            continue
        for entry in entries:
            if excluded(entry.path[root_len:]):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                    continue
                st = entry.stat(follow_symlinks=False)
                if follow_symlinks and stat.S_ISLNK(st.st_mode):
                    st = entry.stat(follow_symlinks=True)  # a dangling link raises: not catalogued
            except OSError as exc:  # vanished between readdir and stat, or unreadable
                if not isinstance(exc, FileNotFoundError):
                    on_error(entry.path, exc)
                continue
            if is_catalogued(st):
                yield Found(entry.path, st)


def changed(
    found: Iterator[Found], known: dict[bytes, Signature], batch: int = 256
) -> Iterator[tuple[int, list[Found]]]:
    """Compare a walk with the index. Yields ``(seen, changed)`` per chunk of ``batch`` entries;
    every path seen is removed from ``known``, so what is left afterwards is gone from disk."""
    seen = 0
    out: list[Found] = []
    pop = known.pop
    fsencode = os.fsencode
    for f in found:
        seen += 1
        if pop(fsencode(f.path), None) != signature_of(f.stat):
            out.append(f)
        if seen >= batch:
            yield seen, out
            seen, out = 0, []
    if seen:
        yield seen, out
