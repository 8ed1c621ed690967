"""The agent against hostile trees: names made of every awkward byte, a tree deeper than
PATH_MAX, symlink loops, special files, unreadable directories, and a tree that changes while
the first scan runs. Trees are generated from a seeded ``random.Random`` (the seed is in every
failure message); the agent and the API are real processes, as in test_resilience.py.

What the README promises, and what is asserted here: every regular file and every symlink is
catalogued (a link as itself: its content is its target path; never followed, so nothing
outside the tree is read or recorded); sockets, FIFOs and devices are never opened; a path the
agent cannot read is reported once, on one line, and fails only itself.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import socket
import stat
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.agent.conftest import Agent, ApiProcess
from tests.agent.test_resilience import NOBODY, NobodyAgent, _interpreter_for_nobody, log_records, public_dir
from tests.waiting import wait_until

__all__ = ["public_dir"]  # a fixture used here, defined in test_resilience.py

SEED = 20261128
PATH_MAX = 4096  # bytes, with the terminating NUL: the longest path a syscall takes is 4095
NAME_MAX = 255

# Pieces of file names: shell and JSON metacharacters, control characters, a leading dash,
# combining and right-to-left marks, emoji, and bytes that are not UTF-8.
PIECES: list[bytes] = [
    *(s.encode() for s in (" ", "\n", "\t", "\r", "\\", "'", '"', "-", "--", "*", "?", "[a]", "$HOME", "%s", "~")),
    *(s.encode() for s in ("é", "e\u0301", "😀", "👩\u200d💻", "\u202e", "שלום", "مرحبا", "日本語", "\ufeff")),
    b"\xff", b"\xe9", b"\x80", b"\xc3(", b"\xed\xa0\x80",  # invalid UTF-8, a lone surrogate's encoding
    b"plain", b"file", b"x",
]  # fmt: skip


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def catalogued_as(path: bytes) -> str:
    """The key of ``path`` in ``ApiProcess.catalogue``: the name the catalogue holds for it, as
    ``os.fsdecode`` gives it (the catalogue's name is injective: see test_bad_input)."""
    return os.fsdecode(path)


def as_logged(path: bytes) -> str:
    """How the agent's log names ``path``: a byte that is not UTF-8 as \\xNN, control
    characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in path.decode("utf-8", "backslashreplace"))


@dataclass
class FuzzTree:
    """A generated tree and what the catalogue must hold for it once synced."""

    root: bytes
    rng: random.Random
    expected: dict[bytes, bytes] = field(default_factory=dict)  # path -> content (a link's: its target)
    fifos: list[bytes] = field(default_factory=list)
    denied: list[bytes] = field(default_factory=list)
    too_long: list[bytes] = field(default_factory=list)  # regular files past PATH_MAX
    _names: dict[bytes, set[str]] = field(default_factory=dict)

    def name(self, directory: bytes) -> bytes:
        """A fresh odd name in ``directory`` (distinct as the catalogue stores it, too)."""
        taken = self._names.setdefault(directory, set())
        while True:
            name = b"".join(self.rng.choice(PIECES) for _ in range(self.rng.randint(1, 6)))
            if self.rng.random() < 0.2:
                name = b"-" + name  # looks like an option to any tool that gets it as an argument
            if name in (b".", b"..") or len(name) > NAME_MAX:
                continue
            if catalogued_as(name) not in taken:
                taken.add(catalogued_as(name))
                return name

    def content(self) -> bytes:
        size = self.rng.choice([0, 1, 17, 4096, 65_537, 300_000])  # 300 kB goes up streamed, alone
        return self.rng.randbytes(size)

    def file(self, directory: bytes, name: bytes | None = None, data: bytes | None = None) -> bytes:
        path = os.path.join(directory, name if name is not None else self.name(directory))
        data = self.content() if data is None else data
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o644)
        self.expected[path] = data
        self._names.setdefault(directory, set()).add(catalogued_as(os.path.basename(path)))
        return path

    def directory(self, parent: bytes) -> bytes:
        path = os.path.join(parent, self.name(parent))
        os.mkdir(path, 0o755)
        return path

    def link(self, directory: bytes, name: bytes, target: bytes) -> None:
        path = os.path.join(directory, name)
        os.symlink(target, path)
        self.expected[path] = target  # recorded as a link, never followed
        self._names.setdefault(directory, set()).add(catalogued_as(name))

    def catalogue(self) -> dict[str, str]:
        return {catalogued_as(p): sha(d) for p, d in self.expected.items()}


def odd_names(t: FuzzTree, directory: bytes, depth: int = 0) -> None:
    """Random files and directories with random names, a few levels deep."""
    for _ in range(t.rng.randint(4, 10)):
        t.file(directory)
    if depth < 3:
        for _ in range(t.rng.randint(1, 3)):
            odd_names(t, t.directory(directory), depth + 1)


def chosen_names(t: FuzzTree) -> None:
    """Names a random draw could miss: the same name in NFC and NFD, the longest names."""
    d = t.directory(t.root)
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    for name in (nfc.encode(), nfd.encode(), b"-rf", b"--help", b" ", b"..."):
        t.file(d, name)
    t.file(d, b"a" * NAME_MAX)
    t.file(d, "é".encode() * 127 + b"x")  # 255 bytes of two-byte characters
    t.file(d, b"\xff" * NAME_MAX)  # stored escaped: 1020 characters
    # The text \xe9 and the byte 0xE9 (with and without a backslash beside): four names.
    for name in (b"caf\\xe9", b"caf\xe9", b"caf\\\xe9", b"caf\\\\xe9"):
        t.file(d, name)


def deep_tree(t: FuzzTree, levels: int = 110) -> None:
    """``levels`` nested directories, a file in each: the deepest paths are longer than PATH_MAX,
    so they are made relative to a directory descriptor (no syscall takes such a path whole)."""
    component = b"d" * 40
    path = os.path.join(t.root, b"deep")
    os.mkdir(path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(levels):
            data = t.rng.randbytes(t.rng.randint(0, 64))
            file_path = os.path.join(path, b"f%d" % level)
            out = os.open(b"f%d" % level, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(out, data)
            os.close(out)
            if len(file_path) < PATH_MAX:
                t.expected[file_path] = data
            else:
                t.too_long.append(file_path)
            os.mkdir(component, 0o755, dir_fd=fd)
            inner = os.open(component, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
            path = os.path.join(path, component)
    finally:
        os.close(fd)
    assert t.too_long, "the deep tree does not reach PATH_MAX"


def links(t: FuzzTree) -> None:
    d = t.directory(t.root)
    t.link(d, b"a", b"b")  # a -> b -> a
    t.link(d, b"b", b"a")
    t.link(d, b"self", b"self")
    t.link(d, b"up", b"..")  # a directory link to an ancestor: a loop if it were descended
    t.link(d, b"root", t.root)
    t.link(d, b"dangling", b"/nonexistent/putplace/target")
    t.link(d, b"outside", b"/etc/passwd")  # recorded as a link; /etc/passwd is never read
    t.link(d, b"\xff link \n", b"\xfe target")


def special_files(t: FuzzTree) -> list[socket.socket]:
    """A FIFO (opening it for reading blocks), a socket, and character devices like /dev/zero
    (reading never ends) and /dev/null: none may be opened, let alone read."""
    d = t.directory(t.root)
    for name in (b"fifo", b"-fifo \n"):
        os.mkfifo(os.path.join(d, name), 0o666)
        t.fifos.append(os.path.join(d, name))
    os.mknod(os.path.join(d, b"zero"), stat.S_IFCHR | 0o666, os.makedev(1, 5))
    os.mknod(os.path.join(d, b"null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    t.link(d, b"to-fifo", b"fifo")
    t.link(d, b"to-zero", os.path.join(d, b"zero"))
    server = socket.socket(socket.AF_UNIX)
    server.bind(os.path.join(d, b"socket"))
    return [server]


def denied_dirs(t: FuzzTree) -> None:
    """Directories the agent (user nobody) may not list, or may list but not enter."""
    for mode in (0o000, 0o644):
        d = t.directory(t.root)
        inner = os.path.join(d, b"inner")
        os.mkdir(inner)
        with open(os.path.join(inner, b"hidden"), "wb") as f:
            f.write(b"not for nobody")
        if mode == 0o644:  # listable: its entries are seen but cannot be stat'ed
            with open(os.path.join(d, b"f"), "wb") as f:
                f.write(b"seen, not read")
        os.chmod(d, mode)
        t.denied.append(d)


@contextmanager
def watch_fifos(fifos: list[bytes]) -> Iterator[list[bytes]]:
    """Whoever opens a FIFO for reading lets a non-blocking writer in: the yielded list names
    every FIFO that was open for reading at some point while the block ran."""
    opened: list[bytes] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.005):
            for path in fifos:
                try:
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # no reader: as it should be
                        continue
                    raise
                opened.append(path)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield opened
    finally:
        stop.set()
        thread.join()


def warnings_by_path(agent: Agent) -> dict[str, list[str]]:
    """The agent's WARNING lines, by the path they name (``kind: path: reason``)."""
    out: dict[str, list[str]] = {}
    for record in log_records(agent):
        message = str(record.get("message", ""))
        if record.get("level") == "WARNING" and message.startswith(("unreadable: ", "rejected: ")):
            path = message.split(": ", 1)[1].rsplit(": ", 1)[0]
            out.setdefault(path, []).append(message)
    return out


def assert_clean_log(agent: Agent, seed: int) -> None:
    """No traceback, nothing at ERROR, and one JSON record per line (a name's newline is escaped)."""
    text = agent.log_path.read_text()
    assert "Traceback" not in text, f"seed {seed}:\n{text[-3000:]}"
    assert all(isinstance(json.loads(line), dict) for line in text.splitlines() if line), f"seed {seed}"
    # and in any format: no name's control character reaches a message (a newline would forge a line)
    assert all(str(r["message"]).isprintable() for r in log_records(agent)), f"seed {seed}"
    serious = [r for r in log_records(agent) if r["level"] in ("ERROR", "CRITICAL")]
    assert not serious, f"seed {seed}: {serious}"


@pytest.mark.parametrize("seed", [SEED, SEED + 1])
def test_a_hostile_tree_is_catalogued_exactly_in_one_pass(api_process: ApiProcess, public_dir: Path, seed: int) -> None:
    root = os.fsencode(public_dir / "tree")
    os.mkdir(root, 0o755)
    t = FuzzTree(root, random.Random(seed))
    odd_names(t, t.directory(root))
    chosen_names(t)
    deep_tree(t)
    links(t)
    sockets = special_files(t)
    denied_dirs(t)
    work = public_dir / "work"
    work.mkdir()
    os.chown(work, NOBODY, NOBODY)
    agent = NobodyAgent(api_process, Path(os.fsdecode(root)), work, node="fuzz", interpreter=_interpreter_for_nobody())

    started = time.monotonic()
    with watch_fifos(t.fifos) as opened:
        code, summary = agent.once(timeout=120)
    seconds = time.monotonic() - started
    for s in sockets:
        s.close()

    assert_clean_log(agent, seed)
    # Exit 1: the unreadable directories and the paths past PATH_MAX failed, and only they.
    assert code == 1, f"seed {seed}: {summary}"
    assert opened == [], f"seed {seed}: a FIFO was opened"
    catalogue = api_process.catalogue("fuzz")
    expected = t.catalogue()
    assert sorted(set(catalogue) - set(expected)) == [], f"seed {seed}: catalogued, not expected"
    assert sorted(set(expected) - set(catalogue)) == [], f"seed {seed}: expected, not catalogued"
    assert catalogue == expected, f"seed {seed}"
    assert all(p.startswith(catalogued_as(root) + "/") for p in catalogue)

    reported = warnings_by_path(agent)
    assert all(len(lines) == 1 for lines in reported.values()), f"seed {seed}: {reported}"
    for d in t.denied:
        assert any(p == as_logged(d) or p.startswith(as_logged(d) + "/") for p in reported), (seed, reported)
    deep = os.fsdecode(os.path.join(root, b"deep"))
    too_long = [p for p in reported if p.startswith(deep)]
    assert too_long and all(len(os.fsencode(p)) >= PATH_MAX - 41 for p in too_long), (seed, too_long)
    assert summary["failed"] == len(reported), (seed, summary, reported)
    assert seconds < 90, f"seed {seed}: one pass took {seconds:.0f} s"


def reference_catalogue(root: bytes) -> dict[str, str]:
    """What the catalogue must hold for ``root`` as it is on disk now, per the README's rules."""
    out: dict[str, str] = {}
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                elif stat.S_ISLNK(st.st_mode):
                    out[catalogued_as(entry.path)] = sha(os.readlink(entry.path))
                elif stat.S_ISREG(st.st_mode):
                    with open(entry.path, "rb") as f:
                        out[catalogued_as(entry.path)] = sha(f.read())
            except OSError as exc:
                if exc.errno != errno.ENAMETOOLONG:
                    raise
    return out


def churn(t: FuzzTree, area: bytes, stop: threading.Event, steps: list[str]) -> None:
    """Mutate ``area`` until ``stop``: files and directories appear, vanish, are renamed, and
    become something else (a directory, a link, a FIFO) under the same name."""
    rng = t.rng
    live: list[bytes] = []
    while not stop.is_set():
        action = rng.choice(["file", "file", "dir", "remove", "rename", "retype", "rmtree"])
        try:
            if action == "file" or not live:
                parent = rng.choice([area, *[p for p in live if os.path.isdir(p)]])
                path = os.path.join(parent, t.name(parent))
                with open(path, "wb") as f:
                    f.write(t.content())
                live.append(path)
            elif action == "dir":
                parent = rng.choice([area, *[p for p in live if os.path.isdir(p)]])
                path = os.path.join(parent, t.name(parent))
                os.mkdir(path)
                for _ in range(rng.randint(1, 20)):
                    with open(os.path.join(path, t.name(path)), "wb") as f:
                        f.write(t.content())
                live.append(path)
            elif action == "remove":
                path = live.pop(rng.randrange(len(live)))
                if os.path.isdir(path) and not os.path.islink(path):
                    _rmtree(path)
                else:
                    os.unlink(path)
            elif action == "rename":
                path = live.pop(rng.randrange(len(live)))
                new = os.path.join(area, t.name(area))
                os.rename(path, new)
                live.append(new)
            elif action == "retype":
                path = live[rng.randrange(len(live))]
                if not os.path.isdir(path) or os.path.islink(path):
                    os.unlink(path)
                    kind = rng.choice(["dir", "link", "fifo"])
                    if kind == "dir":
                        os.mkdir(path)
                    elif kind == "link":
                        os.symlink(b"../" + os.path.basename(path), path)
                    else:
                        os.mkfifo(path)
            else:
                for path in [p for p in live if os.path.isdir(p) and not os.path.islink(p)]:
                    _rmtree(path)
                live = [p for p in live if os.path.lexists(p)]
        except FileNotFoundError:  # an ancestor went meanwhile
            live = [p for p in live if os.path.lexists(p)]
        steps.append(action)
        time.sleep(rng.random() * 0.002)


def _rmtree(path: bytes) -> None:
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            if not os.path.islink(os.path.join(dirpath, name)):
                os.rmdir(os.path.join(dirpath, name))
    os.rmdir(path)


def test_a_tree_changing_during_the_first_scan_converges(
    api_process: ApiProcess, tree: Path, make_agent: Callable[..., Agent]
) -> None:
    seed = SEED + 7
    root = os.fsencode(tree)
    t = FuzzTree(root, random.Random(seed))
    for _ in range(6):
        odd_names(t, t.directory(root))  # enough files that the first scan is still busy
    deep_tree(t)
    links(t)
    area = os.path.join(root, b"churn")
    os.mkdir(area)
    stop, steps = threading.Event(), list[str]()
    mutator = threading.Thread(target=churn, args=(t, area, stop, steps), daemon=True)
    agent = make_agent(node="churn")

    mutator.start()
    try:
        agent.start()  # returns once the first scan is done: the tree changed all along
        time.sleep(1.0)
    finally:
        stop.set()
        mutator.join()
    assert len(steps) > 50, steps

    expected = reference_catalogue(root)
    assert expected.keys() >= t.catalogue().keys() - {k for k in t.catalogue() if k.startswith(catalogued_as(area))}
    try:
        wait_until(lambda: api_process.catalogue("churn") == expected, 60, "the catalogue to match the tree")
    except AssertionError:
        got = api_process.catalogue("churn")
        missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
        wrong = sorted(p for p in expected.keys() & got.keys() if expected[p] != got[p])
        raise AssertionError(f"seed {seed}: missing {missing[:5]}, extra {extra[:5]}, wrong sha {wrong[:5]}") from None
    assert agent.popen is not None and agent.popen.poll() is None, "the agent stopped"
    assert agent.stop() == 0
    assert_clean_log(agent, seed)
    reported = warnings_by_path(agent)
    assert all(len(lines) == 1 for lines in reported.values()), f"seed {seed}: {reported}"


def test_following_symlinks_catalogues_their_targets_and_skips_the_rest(
    api_process: ApiProcess, tree: Path, make_agent: Callable[..., Agent]
) -> None:
    """``--follow-symlinks``: a link to a regular file is catalogued with the file's content; a
    link to a directory, a FIFO or a device is skipped (never opened, never descended); a
    dangling link is skipped; a loop of links is reported once, as unreadable."""
    seed = SEED + 3
    root = os.fsencode(tree)
    t = FuzzTree(root, random.Random(seed))
    odd_names(t, t.directory(root))
    links(t)
    sockets = special_files(t)
    inside = t.file(t.directory(root), b"target")
    t.link(root, b"to-inside", inside)
    t.link(root, b"to-inside-relative", os.path.relpath(inside, root))
    expected: dict[str, str] = {}
    loops: list[bytes] = []
    for path, data in t.expected.items():
        if not os.path.islink(path):
            expected[catalogued_as(path)] = sha(data)
            continue
        try:
            st = os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                loops.append(path)
            continue
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:  # the target's content, under the link's path
                expected[catalogued_as(path)] = sha(f.read())
    assert loops and len(expected) > len(t.expected) // 2
    agent = make_agent(node="follow", extra=["--follow-symlinks"])

    with watch_fifos(t.fifos) as opened:
        code, summary = agent.once(timeout=120)
    for s in sockets:
        s.close()

    assert_clean_log(agent, seed)
    assert opened == [], f"seed {seed}: a FIFO was opened"
    assert api_process.catalogue("follow") == expected, f"seed {seed}"
    reported = warnings_by_path(agent)
    assert sorted(reported) == sorted(as_logged(p) for p in loops), (seed, reported)
    assert all(len(lines) == 1 and "Too many levels of symbolic links" in lines[0] for lines in reported.values())
    assert code == 1 and summary["failed"] == len(loops), (seed, summary)


def test_the_text_and_the_byte_are_two_names_catalogued_and_deleted_apart(
    api_process: ApiProcess, tree: Path, make_agent: Callable[..., Agent]
) -> None:
    """A file named with the text ``\\xe9`` and one named with the byte 0xE9 side by side (and
    the same beside a backslash): four records, and deleting one file deletes its record only."""
    root = os.fsencode(tree)
    names = [b"caf\\xe9", b"caf\xe9", b"a\\b\xff", b"a\\b"]
    expected: dict[str, str] = {}
    for n, name in enumerate(names):
        with open(os.path.join(root, name), "wb") as f:
            f.write(b"%d" % n)
        expected[catalogued_as(os.path.join(root, name))] = sha(b"%d" % n)
    agent = make_agent(node="names")
    assert agent.once(timeout=60)[0] == 0
    assert api_process.catalogue("names") == expected
    base = os.fsdecode(root)
    assert sorted((r["filepath"], r["filepath_escaped"]) for r in api_process.records("names")) == [
        (f"{base}/a\\\\b\\xff", True),
        (f"{base}/a\\b", False),
        (f"{base}/caf\\xe9", False),
        (f"{base}/caf\\xe9", True),
    ]

    for gone in (b"caf\xe9", b"a\\b"):
        os.unlink(os.path.join(root, gone))
        del expected[catalogued_as(os.path.join(root, gone))]
    assert agent.once(timeout=60)[0] == 0
    assert api_process.catalogue("names") == expected
    with api_process.http() as c:

        def history(filepath: str, escaped: bool) -> list[str]:
            params = {"hostname": "names", "filepath": filepath, "filepath_escaped": escaped}
            return [h["event"] for h in c.get("/files/history", params=params).raise_for_status().json()["items"]]

        assert history(f"{base}/caf\\xe9", True) == ["deleted"]
        assert history(f"{base}/caf\\xe9", False) == []

    for name in names:
        if os.path.lexists(os.path.join(root, name)):
            os.unlink(os.path.join(root, name))
    assert agent.once(timeout=60)[0] == 0
    assert api_process.catalogue("names") == {}
