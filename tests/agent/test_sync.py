"""The agent against a real API process: what reaches the catalogue, by which path, and what it
costs. How fast a change gets there is a figure of bench/agent_latency.py, not a bound here."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from tests.agent.conftest import Agent, ApiProcess
from tests.waiting import wait_until

# A deadline for a change to arrive, not a figure: a busy machine may take its time, and the
# full rescan that could also bring the change comes only every hour (the default).
TIMELY = 30.0


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return sha(data)


def disk_view(root: Path, prefix: str | None = None) -> dict[str, str]:
    """What the catalogue should say about ``root``: path -> sha256 (symlinks hash their target)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                digest = sha(os.fsencode(os.readlink(path)))
            elif os.path.isfile(path):
                digest = sha(Path(path).read_bytes())
            else:
                continue
            out[path if prefix is None else path.removeprefix(prefix)] = digest
    return out


def test_initial_sync_catalogues_the_tree(
    api_process: ApiProcess, tree: Path, make_agent: Callable[..., Agent]
) -> None:
    write(tree / "a.txt", b"alpha\n")
    write(tree / "sub" / "deeper" / "b.bin", os.urandom(300_000))
    write(tree / "copy1", b"same content\n")
    write(tree / "copy2", b"same content\n")
    write(tree / "empty", b"")
    (tree / "link").symlink_to("a.txt")
    (tree / "dangling").symlink_to("nowhere")
    os.mkfifo(tree / "fifo")  # never catalogued, never blocks the scan
    write(tree / "cache" / "x.tmp", b"excluded by component\n")
    write(tree / "sub" / "notes.swp", b"excluded by glob\n")

    code, summary = make_agent(node="node-a").once("--exclude", "cache", "--exclude", "*.swp")

    assert code == 0, summary
    expected = {p: s for p, s in disk_view(tree).items() if "cache" not in p and not p.endswith(".swp")}
    assert api_process.catalogue("node-a") == expected
    assert summary["uploaded"] == len(set(expected.values()))  # one upload per distinct content
    with api_process.http() as c:
        big = (tree / "sub" / "deeper" / "b.bin").read_bytes()
        assert c.get(f"/content/{sha(big)}").content == big
        record = c.get("/files", params={"hostname": "node-a", "path_prefix": str(tree / "a.txt")}).json()["items"][0]
    st = os.stat(tree / "a.txt")
    assert (record["file_size"], record["file_mode"], record["file_uid"]) == (6, st.st_mode, st.st_uid)
    assert abs(record["file_mtime"] - st.st_mtime) < 1e-3


def test_paths_are_recorded_as_the_node_sees_them(
    api_process: ApiProcess, tree: Path, make_agent: Callable[..., Agent]
) -> None:
    # The node's /var/log mounted at <tree>/var/log, as a DaemonSet mounts it under /host.
    digest = write(tree / "var" / "log" / "syslog", b"boot\n")
    code, _ = make_agent(node="node-a").once("--strip-prefix", str(tree))
    assert code == 0
    assert api_process.catalogue("node-a") == {"/var/log/syslog": digest}


def test_changes_reach_the_catalogue_through_the_watcher(
    api_process: ApiProcess, tree: Path, make_agent: Callable[..., Agent]
) -> None:
    write(tree / "keep", b"keep\n")
    write(tree / "modify", b"v1\n")
    write(tree / "delete", b"doomed\n")
    write(tree / "rename-from", b"moving\n")
    write(tree / "dir" / "inside", b"in a directory\n")
    agent = make_agent(node="node-a")
    agent.start()
    wait_until(lambda: len(api_process.catalogue("node-a")) == 5, 10, "the initial sync")
    scanned = agent.counter("putplace_agent_last_scan_completed_timestamp_seconds")

    def reaches(check: Callable[[dict[str, str]], bool], what: str) -> None:
        wait_until(lambda: check(api_process.catalogue("node-a")), TIMELY, what)

    created = write(tree / "created", b"new file\n")
    reaches(lambda c: c.get(str(tree / "created")) == created, "a created file")
    modified = write(tree / "modify", b"v2, longer\n")
    reaches(lambda c: c.get(str(tree / "modify")) == modified, "a modified file")
    (tree / "delete").unlink()
    reaches(lambda c: str(tree / "delete") not in c, "a deleted file")
    (tree / "rename-from").rename(tree / "rename-to")
    reaches(
        lambda c: str(tree / "rename-from") not in c and c.get(str(tree / "rename-to")) == sha(b"moving\n"),
        "a renamed file",
    )
    (tree / "dir").rename(tree / "moved-dir")
    reaches(
        lambda c: str(tree / "dir" / "inside") not in c and str(tree / "moved-dir" / "inside") in c,
        "a renamed directory",
    )
    assert api_process.catalogue("node-a") == disk_view(tree)
    with api_process.http() as c:  # history keeps the deleted file
        history = c.get("/files/history", params={"hostname": "node-a", "filepath": str(tree / "delete")}).json()
    assert [h["event"] for h in history["items"]] == ["deleted"]
    # Watch events brought every change (each observed from its event), not a full scan.
    assert agent.counter("putplace_agent_change_to_catalogue_seconds_count") >= 5
    assert agent.counter("putplace_agent_last_scan_completed_timestamp_seconds") == scanned
    assert agent.stop() == 0


def test_a_restart_does_not_rehash_unchanged_files(
    api_process: ApiProcess, tree: Path, make_agent: Callable[..., Agent]
) -> None:
    for i in range(50):
        write(tree / f"d{i % 5}" / f"f{i}", os.urandom(1000 + i))
    agent = make_agent(node="node-a")
    code, first = agent.once()
    assert code == 0 and first["hashed"] == 50

    code, second = agent.once()
    assert code == 0
    assert (second["seen"], second["unchanged"], second["hashed"], second["uploaded"]) == (50, 50, 0, 0)

    write(tree / "d0" / "f0", b"changed while the agent was down\n")  # a continuous agent sees it at start
    agent.start()
    assert agent.counter("putplace_agent_files_hashed_total") == 1
    assert agent.counter("putplace_agent_files_skipped_total") == 49
    wait_until(lambda: api_process.catalogue("node-a") == disk_view(tree), 10, "the change made while down")


def test_content_shared_by_two_nodes_is_uploaded_once(
    api_process: ApiProcess, tree: Path, make_agent: Callable[..., Agent]
) -> None:
    for i in range(20):
        write(tree / f"f{i}", os.urandom(5000))
    code, a = make_agent(node="node-a").once()
    code_b, b = make_agent(node="node-b").once()

    assert (code, code_b) == (0, 0)
    assert (a["uploaded"], a["deduplicated"]) == (20, 0)
    assert (b["uploaded"], b["deduplicated"], b["bytes_deduplicated"]) == (0, 20, 100_000)
    assert api_process.catalogue("node-a") == api_process.catalogue("node-b") == disk_view(tree)
    stats = api_process.stats()
    assert (stats["files"], stats["hosts"], stats["contents_stored"]) == (40, 2, 20)


def test_api_down_for_30_seconds_loses_nothing(
    api_process: ApiProcess, tree: Path, make_agent: Callable[..., Agent]
) -> None:
    for i in range(10):
        write(tree / f"before{i}", os.urandom(2000))
    agent = make_agent(node="node-a", env={"PUTPLACE_RETRY_FOR_SECONDS": "5"})
    agent.start()
    wait_until(lambda: api_process.catalogue("node-a") == disk_view(tree), 10, "the initial sync")

    api_process.stop()
    outage_started = time.monotonic()
    for i in range(10):
        write(tree / f"during{i}", os.urandom(3000))  # new content: needs an upload
    write(tree / "before0", b"modified during the outage\n")
    (tree / "before1").unlink()
    (tree / "before2").rename(tree / "renamed-during")
    # Retries give up after 5 s here: the work must then wait in the index, not be dropped.
    wait_until(lambda: agent.counter("putplace_agent_errors_total") > 0, 20, "the agent to notice the outage")
    time.sleep(max(0.0, 30 - (time.monotonic() - outage_started)))
    api_process.start()

    # The agent announces, then uploads: the catalogue matches before the last upload lands.
    def converged() -> bool:
        if api_process.catalogue("node-a") != disk_view(tree):
            return False
        with api_process.http() as c:
            return all(
                c.get(f"/content/{digest}").content == Path(path).read_bytes()
                for path, digest in disk_view(tree).items()
            )

    wait_until(converged, 60, "records and contents to converge after the outage")
    assert agent.stop() == 0
