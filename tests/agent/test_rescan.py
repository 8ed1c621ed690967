"""A rescan against directory summaries (the index's ``dirs``): a directory whose files all
look as they did when they were last synced is skipped whole, so every kind of change inside
one must still change its digest or its summary, and be found. Real agent and API processes."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

from tests.agent.conftest import Agent, ApiProcess
from tests.agent.test_sync import disk_view, write
from tests.waiting import wait_until


def summaries(agent: Agent) -> dict[str, bytes | None]:
    """The agent's directory rows (read beside it: the index is in WAL mode)."""
    with sqlite3.connect(agent.workdir / f"state-{agent.node}" / "index.sqlite3") as db:
        return {os.fsdecode(d): digest for d, digest in db.execute("SELECT dir, digest FROM dirs")}


def file_state(agent: Agent, path: Path) -> int | None:
    with sqlite3.connect(agent.workdir / f"state-{agent.node}" / "index.sqlite3") as db:
        row = db.execute("SELECT state FROM files WHERE path = ?", (os.fsencode(path),)).fetchone()
    return None if row is None else int(row[0])


def synced_and_summarised(agent: Agent, tree: Path, directories: list[str]) -> None:
    code, first = agent.once()  # every file new: hashed and sent, no summary yet
    assert code == 0 and first["failed"] == 0
    code, second = agent.once()  # compared file by file: all unchanged and synced, so summarised
    assert code == 0 and second["hashed"] == 0
    rows = summaries(agent)
    assert sorted(rows) == sorted(str(tree / d) for d in directories)
    assert all(digest is not None for digest in rows.values())


def test_every_kind_of_change_in_a_summarised_directory_is_found(
    api_process: ApiProcess, tree: Path, make_agent: Callable[..., Agent]
) -> None:
    kinds = ["same-size", "mtime", "renamed", "deleted", "added", "new-subdir", "removed-dir", "untouched"]
    for kind in kinds:
        for i in range(3):
            write(tree / kind / f"f{i}", f"{kind} {i}\n".encode())
    agent = make_agent(node="node-a")
    synced_and_summarised(agent, tree, kinds)

    # Same size, same mtime, other bytes: only the ctime tells (as for the per-file signature).
    target = tree / "same-size" / "f0"
    before = target.stat()
    target.write_bytes(b"SAME-SIZE 0\n")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_size == before.st_size
    mtime = (tree / "mtime" / "f1").stat()
    os.utime(tree / "mtime" / "f1", ns=(mtime.st_atime_ns, mtime.st_mtime_ns + 1_000_000_000))
    (tree / "renamed" / "f0").rename(tree / "renamed" / "g0")
    (tree / "deleted" / "f2").unlink()
    write(tree / "added" / "f3", b"added\n")
    write(tree / "new-subdir" / "sub" / "f0", b"in a new subdirectory\n")  # the parent's files are as they were
    shutil.rmtree(tree / "removed-dir")

    code, third = agent.once()

    assert code == 0 and third["failed"] == 0
    assert api_process.catalogue("node-a") == disk_view(tree)
    # Exactly the changed files were looked at again; the 3 + 2 gone ones were deleted.
    assert (third["hashed"], third["deleted"]) == (5, 5)
    assert third["seen"] == third["unchanged"] + 5
    with api_process.http() as c:
        record = c.get("/files/current", params={"hostname": "node-a", "filepath": str(tree / "mtime" / "f1")})
    assert record.json()["file_mtime"] == (mtime.st_mtime_ns + 1_000_000_000) / 1e9

    code, fourth = agent.once()  # nothing changed since: compared file by file, summarised again
    assert code == 0 and fourth["hashed"] == 0 and fourth["deleted"] == 0
    rows = summaries(agent)
    assert str(tree / "removed-dir") not in rows  # nothing is indexed below it any more
    assert all(digest is not None for digest in rows.values())


def test_a_file_pending_when_the_agent_was_killed_is_sent_at_the_next_start(
    api_process: ApiProcess, tree: Path, make_agent: Callable[..., Agent]
) -> None:
    for d in ("a", "b"):
        for i in range(3):
            write(tree / d / f"f{i}", os.urandom(2000))
    agent = make_agent(node="node-a", env={"PUTPLACE_RETRY_FOR_SECONDS": "600"})
    synced_and_summarised(agent, tree, ["a", "b"])

    # With the API down, the change is hashed but cannot be announced: it is owed in the index
    # when the agent is killed.
    api_process.stop()
    changed = tree / "a" / "f1"
    write(changed, b"changed while the server was away\n")
    agent.start()
    wait_until(lambda: file_state(agent, changed) == 1, 30, "the change to be hashed and owed")
    agent.stop(signal.SIGKILL)
    rows = summaries(agent)
    assert rows[str(tree / "a")] is None  # the directory of a pending file has no summary
    assert rows[str(tree / "b")] is not None

    api_process.start()
    code, after = agent.once()

    assert code == 0 and after["failed"] == 0
    assert api_process.catalogue("node-a") == disk_view(tree)
    assert after["hashed"] == 0  # the file was hashed before the kill: it is only sent now
