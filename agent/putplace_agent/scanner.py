"""Walking a tree: which entries to catalogue, and which of them changed since the index saw them.

Pure and blocking (``os.scandir`` + ``lstat``); the agent runs it in a thread. Regular files
and symlinks are catalogued; directories are descended (never through a symlink, never into a
pseudo filesystem); sockets, FIFOs and devices are skipped.
"""

from __future__ import annotations

import hashlib
import logging
import marshal
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import PurePosixPath

from putplace_agent.index import Row, Signature, State

__all__ = [
    "Changed", "Chunk", "Excluder", "FileStat", "Listing", "compare", "digest_of", "is_catalogued", "pseudo_mounts",
    "scan", "signature_of",
]  # fmt: skip

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
FileStat = tuple[bytes, int, int, int, int]  # a name in its directory, and its signature


def digest_of(files: list[FileStat]) -> bytes:
    """A directory's files as a rescan sees them, in one value: equal digests mean the same names
    with the same signatures. marshal version 2 writes no back-references, so the bytes depend
    on the values only; a different spelling (another Python) only costs one slow look."""
    return hashlib.blake2b(marshal.dumps(files, 2), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class Listing:
    """A directory whose files must be compared one by one: its summary is missing or differs."""

    directory: bytes
    files: list[FileStat]
    digest: bytes


def compare(listing: Listing, rows: dict[bytes, Row]) -> tuple[list[Changed], list[bytes], bool]:
    """``listing`` against the index's ``rows`` of that directory (``Index.in_directory``).

    Returns what changed on disk (new, or another signature, or back while its deletion is
    owed), the indexed paths gone from disk, and whether the directory may be summarised: no
    change, nothing gone, every file synced."""
    prefix = listing.directory if listing.directory.endswith(b"/") else listing.directory + b"/"
    changed: list[Changed] = []
    synced = True
    for name, size, mtime_ns, ctime_ns, inode in listing.files:
        path = prefix + name
        row = rows.pop(path, None)
        if row is None or row[4] == State.DELETE or row[:4] != (size, mtime_ns, ctime_ns, inode):
            changed.append((path, size))
        elif row[4] != State.SYNCED:
            synced = False
    gone = [path for path, row in rows.items() if row[4] != State.DELETE]
    return changed, gone, synced and not changed and not rows


Chunk = tuple[int, list[Changed], list[Listing]]
_ABSENT = object()  # the directory has no row: nothing in it is indexed


def scan(
    root: str,
    summaries: dict[bytes, bytes | None],
    known: dict[bytes, Signature],
    *,
    excluded: Excluder,
    skip: frozenset[str] = frozenset(),
    follow_symlinks: bool = False,
    on_error: Callable[[str, OSError], None] = lambda path, exc: None,
    batch: int = 2048,
) -> Iterator[Chunk]:
    """Walk ``root`` depth first against the index: ``summaries`` of its directories
    (``Index.summaries``) and, should ``root`` be a file, its signature in ``known``. Yields
    ``(seen, changed, listings)`` per chunk of about ``batch`` entries: the files found changed
    here, and the directories to compare file by file (``compare``, in the caller's thread,
    which owns the index). Every directory visited is removed from ``summaries`` and a file
    root from ``known``, so what is left afterwards is gone from disk (or was not looked at).

    A no-change rescan is this loop and nothing else, so it stays lean: the walk runs on bytes
    (the index's keys, no encoding per entry), an unchanged directory costs one tuple per file
    and one digest, and the excluder is not even called when there are no patterns."""
    out: list[Changed] = []
    listings: list[Listing] = []
    seen = 0
    try:
        st = os.lstat(root)
    except OSError as exc:
        on_error(root, exc)
        return
    if not stat.S_ISDIR(st.st_mode):
        if is_catalogued(st):
            path = os.fsencode(root)
            if known.pop(path, None) != signature_of(st):
                out.append((path, st.st_size))
            yield 1, out, listings
        return
    is_reg, is_lnk = stat.S_ISREG, stat.S_ISLNK
    skipped = frozenset(os.fsencode(s) for s in skip)
    patterns = excluded if excluded.patterns else None
    top = os.fsencode(root.rstrip("/") or "/")
    root_len = len(top.rstrip(b"/")) + 1
    stack = [top]
    while stack:
        directory = stack.pop()
        if directory in skipped:
            continue
        summary = summaries.pop(directory, _ABSENT)  # even if unreadable: absence proves nothing then
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError as exc:
            on_error(os.fsdecode(directory), exc)
            continue
        files: list[FileStat] = []
        new = 0
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
            if summary is _ABSENT:
                out.append((path, st.st_size))
                new += 1
            else:
                files.append((entry.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
        if summary is _ABSENT:
            seen += new
        else:
            seen += len(files)
            digest = digest_of(files)
            if digest != summary:
                listings.append(Listing(directory, files, digest))
        if seen >= batch:
            yield seen, out, listings
            seen, out, listings = 0, [], []
    if seen or listings:
        yield seen, out, listings
