"""The agent when things go wrong: files that change while they are hashed, a file it may not
read, a 5 GiB file, 200,000 files, a SIGTERM in the middle of an upload, and the OS running out
of inotify watches. Real processes and real files, as in test_sync.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from putplace_agent.hasher import FileChanged, hash_file
from tests.agent.conftest import Agent, ApiProcess, summary_of
from tests.servers.base import workdir
from tests.waiting import wait_until

NOBODY = 65534
MIB = 1024 * 1024
GIB = 1024 * MIB
# sha256 of 5 GiB and of 3 GiB of zero bytes (what a sparse file made with truncate reads as)
ZEROS_5_GIB = "7f06c62352aebd8125b2a1841e2b9e1ffcbed602f381c3dcb3200200e383d1d5"
ZEROS_3_GIB = "305b66a59d15b252092fbda9d09711230c429f351897cbd430e7b55a35fd3b97"


def sha(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def log_records(agent: Agent) -> list[dict[str, Any]]:
    """The agent's JSON log lines (anything else, e.g. a traceback, is left out: look at the text)."""
    out = []
    for line in agent.log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def sample(agent: Agent, name: str, **labels: str) -> float:
    """One sample of a labelled metric on the agent's /metrics (0 when it is absent)."""
    selector = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in agent.metrics().splitlines():
        if line.startswith(selector + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def content_record(api: ApiProcess, digest: str) -> dict[str, Any] | None:
    """GET /get_file/<sha256>: a record with that content, or None."""
    with api.http() as c:
        r = c.get(f"/get_file/{digest}")
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return dict(r.json())


def sparse_file(path: Path, size: int) -> Path:
    """A file of ``size`` zero bytes that takes no room (a hole, made with truncate)."""
    with path.open("wb") as f:
        f.truncate(size)
    return path


def content_stored(api: ApiProcess, digest: str) -> bool:
    record = content_record(api, digest)
    return record is not None and bool(record["has_file_content"])


@pytest.fixture
def big_api(api_process: ApiProcess) -> Iterator[ApiProcess]:
    """The API process, whose data dir (gigabytes of content) is removed as soon as the test ends."""
    yield api_process
    api_process.stop()
    shutil.rmtree(api_process.workdir / "data", ignore_errors=True)


# -- 1. a file rewritten while it is hashed -----------------------------------------------------


# Touches a file as fast as it can, alternately bumping its mtime and appending a byte. A process
# of its own, so that it keeps going whatever this one does (a thread may wait on the GIL long
# enough for a whole hashing attempt to see a still file -- and then rightly return its hash).
_TOUCHER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
n = 0
while True:
    if n % 2:
        os.write(fd, b"+")
    else:
        os.utime(fd, ns=(time.time_ns(), time.time_ns() + n))
    n += 1
"""


def test_hash_file_never_returns_a_hash_of_a_file_that_changes_while_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    block = os.urandom(MIB)
    with path.open("wb") as f:
        for _ in range(200):
            f.write(block)
    toucher = subprocess.Popen([sys.executable, "-S", "-c", _TOUCHER, str(path)])
    try:
        wait_until(lambda: path.stat().st_size > 200 * MIB + 100, 10, "the toucher to get going")
        for _ in range(3):
            grown = path.stat().st_size
            with pytest.raises(FileChanged):
                hash_file(os.fsencode(path))  # three attempts each, every one sees a change
            assert path.stat().st_size > grown
    finally:
        toucher.kill()
        toucher.wait()
    # Once the file holds still, the same call hashes it, and right.
    data = path.read_bytes()
    entry = hash_file(os.fsencode(path))
    assert (entry.sha256, entry.size) == (sha(data), len(data))
    assert data[: 200 * MIB] == block * 200 and set(data[200 * MIB :]) == {ord("+")}


def test_a_file_rewritten_while_it_is_synced_ends_up_catalogued_as_its_final_bytes(
    api_process: ApiProcess, tree: Path, make_agent: Callable[..., Agent]
) -> None:
    target = tree / "busy.bin"
    chunk, chunks = MIB, 16  # hashing 16 MiB takes longer than the writer below ever pauses
    buf = bytearray(os.urandom(chunks * chunk + 4000))

    def version(i: int) -> memoryview:  # each MiB tagged with the version and its position; a 0-4 kB tail
        for j in range(chunks):
            buf[j * chunk : j * chunk + 16] = i.to_bytes(8, "big") + j.to_bytes(8, "big")
        return memoryview(buf)[: chunks * chunk + (i % 5) * 1000]

    target.write_bytes(version(0))
    agent = make_agent(node="node-a", env={"PUTPLACE_DRAIN_SECONDS": "1"})
    agent.start()
    wait_until(lambda: api_process.catalogue("node-a").get(str(target)) == sha(version(0)), 10, "the first version")

    # Rewrite it in place for 3 s, a MiB at a time: the agent sees it change mid-hash (and mid-upload).
    # In place, because a truncated file is briefly empty: a state the agent may rightly catalogue.
    deadline = time.monotonic() + 3
    versions = 0
    while time.monotonic() < deadline:
        versions += 1
        data = version(versions)
        with target.open("r+b", buffering=0) as f:
            for start in range(0, len(data), chunk):
                f.write(data[start : start + chunk])
                time.sleep(0.001)
            f.truncate()
    final = sha(version(versions))
    assert sha(target.read_bytes()) == final

    wait_until(lambda: api_process.catalogue("node-a").get(str(target)) == final, 30, "the final version")
    wait_until(lambda: content_stored(api_process, final), 30, "the final content at the server")
    with api_process.http() as c:
        body = c.get(f"/content/{final}").raise_for_status().content
    assert sha(body) == final
    assert api_process.catalogue("node-a") == {str(target): final}
    assert sample(agent, "putplace_agent_errors_total", kind="changed_while_hashing") >= 1
    assert agent.stop() == 0
    summary = summary_of(agent.log_path.read_text())
    assert summary["failed"] == 0, summary  # a busy file is looked at again later, it is no failure
    assert "Traceback" not in agent.log_path.read_text()


def test_once_does_not_exit_0_before_a_file_that_changed_while_hashed_is_catalogued(
    api_process: ApiProcess, tree: Path, make_agent: Callable[..., Agent]
) -> None:
    target = tree / "busy.bin"
    buf = bytearray(os.urandom(16 * MIB))
    target.write_bytes(buf)
    stop = threading.Event()

    def rewrite() -> None:  # in place, a MiB at a time, until stopped
        version = 0
        while not stop.is_set():
            version += 1
            buf[:8] = version.to_bytes(8, "big")
            with target.open("r+b", buffering=0) as f:
                for start in range(0, len(buf), MIB):
                    f.write(memoryview(buf)[start : start + MIB])
                    time.sleep(0.001)

    writer = threading.Thread(target=rewrite, daemon=True)
    writer.start()
    threading.Timer(2.5, stop.set).start()
    try:
        code, summary = make_agent(node="node-a").once(timeout=60)
    finally:
        stop.set()
        writer.join(10)
    # The file changed under the first looks; --once must wait for a look that succeeds, not exit
    # 0 (= "everything is in the catalogue") with the file missing from the catalogue.
    assert code == 0, summary
    assert summary["hashed"] == 1, summary
    assert str(target) in api_process.catalogue("node-a")


def test_once_gives_up_on_a_file_that_never_holds_still(
    api_process: ApiProcess, tree: Path, make_agent: Callable[..., Agent]
) -> None:
    target = tree / "busy.bin"
    target.write_bytes(os.urandom(64 * MIB))
    (tree / "still.txt").write_bytes(b"still\n")
    agent = make_agent(node="node-a")
    toucher = subprocess.Popen([sys.executable, "-S", "-c", _TOUCHER, str(target)])
    try:
        started = time.monotonic()
        code, summary = agent.once(timeout=120)
        seconds = time.monotonic() - started
    finally:
        toucher.kill()
        toucher.wait()
    # Looked at again 1 s, 5 s and 30 s later, then given up: a failure, not a hang, not a silent 0.
    assert code == 1, summary
    assert (summary["failed"], summary["hashed"]) == (1, 1), summary
    assert seconds > 36
    assert api_process.catalogue("node-a") == {str(tree / "still.txt"): sha(b"still\n")}
    naming = [r for r in log_records(agent) if r["level"] == "WARNING" and str(target) in r["message"]]
    assert len(naming) == 1 and "kept changing" in naming[0]["message"], naming


# -- 2. a file the agent may not read -----------------------------------------------------------

# The agent runs as nobody: root reads a mode-000 file anyway. The interpreter is started with -S
# and given this project's environment by hand, because the venv's python may sit under /root.
_ENVIRONMENT = f"import runpy, site; site.addsitedir({sysconfig.get_paths()['purelib']!r})"
_BOOTSTRAP = _ENVIRONMENT + "; runpy.run_module('putplace_agent', run_name='__main__', alter_sys=True)"


def _interpreter_for_nobody() -> str:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        try:
            probe = subprocess.run(
                [candidate, "-S", "-c", _ENVIRONMENT + "; import putplace_agent.cli"],
                user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True, timeout=60,
            )  # fmt: skip
        except OSError:  # missing, or not executable for nobody
            continue
        if probe.returncode == 0:
            return candidate
    raise AssertionError(f"no python {version} that user {NOBODY} may run (tried {sys.executable} and /usr/bin)")


@dataclass
class NobodyAgent(Agent):
    """An ``Agent`` whose ``--once`` runs as user nobody."""

    interpreter: str = sys.executable

    def argv(self, *more: str) -> list[str]:
        argv = super().argv(*more)
        assert argv[:3] == [sys.executable, "-m", "putplace_agent"]
        return [self.interpreter, "-S", "-c", _BOOTSTRAP, *argv[3:]]

    def once(self, *more: str, timeout: float = 600) -> tuple[int, dict[str, Any]]:
        r = subprocess.run(
            self.argv("--once", *more), env=self.environ(), capture_output=True, timeout=timeout, text=True,
            user=NOBODY, group=NOBODY, extra_groups=[],
        )  # fmt: skip
        with self.log_path.open("a") as log:
            log.write(r.stderr)
        return r.returncode, summary_of(r.stderr)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A fresh directory nobody can reach (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="putplace-nobody-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_an_unreadable_file_fails_alone_and_is_reported_once(api_process: ApiProcess, public_dir: Path) -> None:
    tree = public_dir / "tree"
    (tree / "sub").mkdir(parents=True)
    readable = {tree / "a.txt": b"alpha\n", tree / "sub" / "b.txt": b"beta\n", tree / "sub" / "c.bin": os.urandom(4096)}
    for path, data in readable.items():
        path.write_bytes(data)
    secret = tree / "sub" / "secret"
    secret.write_bytes(b"for root only\n")
    for directory in (tree, tree / "sub"):
        directory.chmod(0o755)
    for path in readable:
        path.chmod(0o644)
    secret.chmod(0o000)
    work = public_dir / "work"
    work.mkdir()
    os.chown(work, NOBODY, NOBODY)
    agent = NobodyAgent(api_process, tree, work, node="node-n", interpreter=_interpreter_for_nobody())

    code, summary = agent.once()

    assert code == 1, summary
    assert summary["failed"] == 1 and summary["hashed"] == 3, summary
    assert api_process.catalogue("node-n") == {str(p): sha(d) for p, d in readable.items()}
    text = agent.log_path.read_text()
    assert "Traceback" not in text
    naming = [r for r in log_records(agent) if str(secret) in json.dumps(r)]
    assert len(naming) == 1, naming
    assert naming[0]["level"] == "WARNING" and "unreadable" in naming[0]["message"], naming[0]
    assert "Permission denied" in naming[0]["message"]
    assert not [r for r in log_records(agent) if r["level"] in ("ERROR", "CRITICAL")]

    # The next pass tries it again (it is not forgotten), and only it.
    code, summary = agent.once()
    assert (code, summary["failed"], summary["hashed"], summary["unchanged"]) == (1, 1, 0, 3), summary


# -- 3. a 5 GiB file ----------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_a_sparse_5_gib_file_is_synced_in_bounded_memory(
    big_api: ApiProcess, tree: Path, make_agent: Callable[..., Agent]
) -> None:
    big = sparse_file(tree / "sparse.img", 5 * GIB)
    agent = make_agent(node="node-a")
    agent.start()
    # About a minute on an idle 2-core machine; the deadline only catches a stall, not slowness
    # (hashed twice and written once: 15 GiB of work that a loaded machine may take minutes for).
    wait_until(lambda: content_stored(big_api, ZEROS_5_GIB), 540, "the 5 GiB content at the server")
    assert big_api.catalogue("node-a") == {str(big): ZEROS_5_GIB}
    assert agent.counter("putplace_agent_bytes_uploaded_total") == 5 * GIB
    # It went up in chunks (above the agent's session threshold), each chunk once.
    assert big_api.counter("putplace_upload_session_held_bytes_total") == 5 * GIB
    assert big_api.counter("putplace_upload_session_received_bytes_total") == 5 * GIB
    peak = agent.rss_bytes()
    assert peak < 150 * MIB, f"the agent's peak RSS was {peak / MIB:.0f} MiB"
    api_peak = big_api.rss_bytes()
    assert api_peak < 150 * MIB, f"the API's peak RSS was {api_peak / MIB:.0f} MiB"
    print(f"5 GiB in chunks: peak RSS agent {peak / MIB:.0f} MiB, API {api_peak / MIB:.0f} MiB")
    assert agent.stop() == 0


# -- 4. 200,000 files ---------------------------------------------------------------------------


@pytest.fixture
def huge_tree() -> Iterator[Path]:
    """200 directories of 1,000 small files each, only 1,000 distinct contents among them.

    In RAM (/dev/shm) when there is one: creating 200,000 files on a VM's disk can take a minute.
    """
    with workdir("huge") as root:
        for d in range(200):
            directory = root / f"d{d:03}"
            directory.mkdir()
            for i in range(1000):
                fd = os.open(directory / f"f{i:04}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                os.write(fd, b"content %d\n" % ((d * 7 + i) % 1000))
                os.close(fd)
        yield root


def test_a_tree_of_200_000_files(api_process: ApiProcess, huge_tree: Path, make_agent: Callable[..., Agent]) -> None:
    agent = make_agent(node="node-a", root=huge_tree)
    started = time.monotonic()
    code, first = agent.once()
    first_seconds = time.monotonic() - started
    assert code == 0, first
    assert (first["hashed"], first["failed"]) == (200_000, 0), first
    # Each content goes up once, whichever bundle carries it first; every other file is a duplicate.
    assert (first["uploaded"], first["deduplicated"]) == (1000, 199_000), first
    stats = api_process.stats()
    assert (stats["files"], stats["contents_stored"]) == (200_000, 1000), stats

    started = time.monotonic()
    code, second = agent.once()
    second_seconds = time.monotonic() - started
    assert code == 0, second
    assert (second["hashed"], second["unchanged"], second["uploaded"]) == (0, 200_000, 0), second
    assert api_process.stats()["files"] == 200_000
    print(
        f"200,000 files: first --once {first_seconds:.1f} s ({first['uploaded']} uploads),"
        f" second --once {second_seconds:.1f} s"
    )


# -- 5. SIGTERM in the middle of an upload ------------------------------------------------------


def test_sigterm_during_an_upload_then_a_restart_finishes_it_without_rehashing(
    big_api: ApiProcess, tree: Path, make_agent: Callable[..., Agent]
) -> None:
    big = sparse_file(tree / "big.img", 3 * GIB)
    # One request for the whole content (the session threshold above it): the upload in progress
    # is the server's temp file; the chunked path is the next test's.
    env = {"PUTPLACE_DRAIN_SECONDS": "1", "PUTPLACE_SESSION_THRESHOLD_BYTES": str(4 * GIB)}
    agent = make_agent(node="node-a", env=env)
    temps = big_api.workdir / "data" / "content" / ".tmp"  # where the server writes an upload in progress

    def uploaded_so_far() -> int:
        sizes = []
        for temp in temps.glob(ZEROS_3_GIB + ".*"):
            try:
                sizes.append(temp.stat().st_size)
            except FileNotFoundError:  # just renamed into place, or aborted
                pass
        return max(sizes, default=0)

    agent.start()
    wait_until(lambda: uploaded_so_far() > 100 * MIB, 30, "the upload to be under way")
    assert agent.counter("putplace_agent_files_hashed_total") == 1
    assert agent.counter("putplace_agent_files_uploaded_total") == 0
    assert not content_stored(big_api, ZEROS_3_GIB)

    assert agent.stop() == 0
    # Stopped at the 1 s drain, not after the 3 GiB upload (no clock here: a busy machine is slow).
    assert not content_stored(big_api, ZEROS_3_GIB)  # the upload was cut short: nothing stored
    wait_until(lambda: not list(temps.glob(ZEROS_3_GIB + ".*")), 5, "the server to drop the partial upload")
    assert any("still pending" in r["message"] for r in log_records(agent))

    agent.start()
    wait_until(lambda: content_stored(big_api, ZEROS_3_GIB), 60, "the content after the restart")
    assert agent.counter("putplace_agent_files_hashed_total") == 0  # the index remembered the hash
    assert agent.counter("putplace_agent_files_uploaded_total") == 1
    assert big_api.catalogue("node-a") == {str(big): ZEROS_3_GIB}
    assert agent.stop() == 0


# -- 6. the OS watch limit ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("knob", "value"),
    [("max_user_watches", "1"), ("max_user_instances", "0")],
    ids=["watches", "instances"],
)
def test_the_watch_limit_falls_back_to_polling(
    api_process: ApiProcess, tree: Path, make_agent: Callable[..., Agent], knob: str, value: str
) -> None:
    for d in range(5):
        (tree / f"dir{d}" / "deeper").mkdir(parents=True)
        (tree / f"dir{d}" / "deeper" / "old.txt").write_bytes(b"old %d\n" % d)
    agent = make_agent(node="node-a")
    limit = Path("/proc/sys/fs/inotify") / knob
    original = limit.read_text()
    limit.write_text(value)  # for root, system-wide: only while the agent starts its watch
    try:
        agent.start()
    finally:
        limit.write_text(original)
    assert limit.read_text() == original

    wait_until(lambda: agent.counter("putplace_agent_watch_polling") == 1, 5, "the watcher to poll")
    warnings = [r for r in log_records(agent) if "watch limit" in r["message"]]
    assert len(warnings) == 1, warnings
    assert warnings[0]["level"] == "WARNING"
    assert sample(agent, "putplace_agent_errors_total", kind="watch_limit") == 1

    new = tree / "dir3" / "deeper" / "new.txt"  # deep in the tree: a partial inotify watch misses it
    new.write_bytes(b"new\n")
    wait_until(lambda: api_process.catalogue("node-a").get(str(new)) == sha(b"new\n"), 6, "the new file (polled)")
    assert len(api_process.catalogue("node-a")) == 6
    assert agent.stop() == 0
    assert len([r for r in log_records(agent) if "watch limit" in r["message"]]) == 1
    assert "Traceback" not in agent.log_path.read_text()
