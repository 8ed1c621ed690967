"""``kill -9`` of the API during a stream of uploads, and of the agent mid-scan and mid-upload:
nothing partial ever shows under a content's name, no record claims content that is not there,
and once restarted the agent converges, re-hashing only what its index had not yet recorded."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from tests.faults.conftest import BackendApi
from tests.faults.integrity import assert_claims_hold, assert_intact, converged, local_objects
from tests.faults.load import write_tree
from tests.processes import Agent, ApiProcess
from tests.waiting import wait_until

MIB = 1024 * 1024
SIZE = 2048 * MIB  # the file the agent is killed uploading
HASHED = "putplace_agent_files_hashed_total"
UPLOADED = "putplace_agent_files_uploaded_total"


def indexed(agent: Agent) -> int:
    """Files the agent's index has recorded as hashed (0 while it has no index yet)."""
    path = agent.workdir / f"state-{agent.node}" / "index.sqlite3"
    try:
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT count(*) FROM files").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet, or its table not yet
        return 0


def test_api_killed_during_a_stream_of_uploads(
    tmp_path: Path, backend_api: BackendApi, make_agent: Callable[..., Agent]
) -> None:
    tree = tmp_path / "tree"
    expected = write_tree(tree, 40, 2 * MIB)
    api, list_objects = backend_api.api, backend_api.list_objects
    agent = make_agent(api=api, root=tree)
    agent.start(wait_for_scan=False)

    def stored() -> int:
        return sum(r["has_file_content"] for r in api.records("node-a"))

    wait_until(lambda: stored() >= 3, 30, "the first contents stored")
    api.kill()  # four uploads at a time: some are cut short
    # Whatever the kill cut short, nothing partial is visible under a content's name...
    objects = list_objects()
    for name, data in objects.items():
        assert hashlib.sha256(data).hexdigest() == name, f"partial object {name}"
    assert len(objects) < len(expected), "the kill came after every upload"

    api.start()  # same port, same data
    # ... and no record claims content that is not there, before the agent has re-sent anything.
    assert_claims_hold(api, list_objects)
    wait_until(lambda: converged(api, "node-a", expected), 60, "the agent to converge")
    assert agent.popen is not None and agent.popen.poll() is None, "the agent gave up"
    assert agent.counter(HASHED) == len(expected)  # each file hashed once, outage or not
    assert agent.stop() == 0
    assert_intact(api, {("node-a", p): d for p, d in expected.items()}, list_objects)


def test_api_killed_while_writing_packs(
    tmp_path: Path, backend_api: BackendApi, make_agent: Callable[..., Agent]
) -> None:
    """Small files travel many to a request and are stored as one pack per request: ``kill -9``
    of the API amid them leaves no record pointing at a missing or partial pack, the agent
    converges once the API is back, and gc reclaims the packs the kill left unreferenced."""
    tree = tmp_path / "tree"
    expected = write_tree(tree, 600, 40 * 1024)  # about three requests of 8 MiB (few records: FerretDB is slow)
    api, list_objects = backend_api.api, backend_api.list_objects
    agent = make_agent(api=api, root=tree)
    agent.start(wait_for_scan=False)
    wait_until(lambda: api.stats()["contents_stored"] >= 1, 30, "the first pack stored")
    api.kill()
    objects = list_objects()
    assert all(name.startswith("packs/") for name in objects), "small contents stored one object each"
    assert len(objects) < len(expected), "the kill came after every upload"

    api.start()  # same port, same data
    assert_claims_hold(api, list_objects)  # every stored content's range of its pack re-hashes right
    # /stats first: listing every record over and over is slow on FerretDB on a busy machine.
    wait_until(lambda: api.stats()["contents_stored"] == len(expected), 180, "every content stored")
    wait_until(lambda: converged(api, "node-a", expected), 60, "the agent to converge")
    assert agent.stop() == 0
    collected = api.maintenance("gc", "--grace", "0", "--delete")
    assert collected["ok"] and collected["kept"]["count"] == 0
    assert_intact(api, {("node-a", p): d for p, d in expected.items()}, list_objects)  # no pack left unreferenced
    assert api.maintenance("verify")["ok"]


def test_agent_killed_mid_scan_rehashes_only_what_it_had_not_recorded(
    tmp_path: Path, start_api: Callable[..., ApiProcess], make_agent: Callable[..., Agent]
) -> None:
    tree = tmp_path / "tree"
    expected = write_tree(tree, 1000, 16 * 1024)
    api = start_api()
    agent = make_agent(api=api, root=tree, env={"PUTPLACE_HASH_WORKERS": "1"})
    agent.spawn()
    # A tight poll of the index itself, not wait_until's growing pause nor /metrics: hashing
    # 1,000 small files takes about half a second, and the kill must land inside it.
    deadline = time.monotonic() + 30
    while indexed(agent) == 0:
        assert time.monotonic() < deadline, "the agent hashed nothing within 30 s"
        time.sleep(0.005)
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    recorded = indexed(agent)
    assert 0 < recorded < len(expected), "the agent had hashed every file before the kill"

    agent.start()
    wait_until(lambda: converged(api, "node-a", expected), 60, "the agent to converge")
    assert agent.counter(HASHED) == len(expected) - recorded  # what the index held is not re-hashed
    assert agent.stop() == 0
    content = api.workdir / "data" / "content"
    assert_intact(api, {("node-a", p): d for p, d in expected.items()}, partial(local_objects, content))


def test_agent_killed_mid_upload_finishes_it_without_rehashing(
    tmp_path: Path, start_api: Callable[..., ApiProcess], make_agent: Callable[..., Agent]
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    big = tree / "big.img"
    with big.open("wb") as f:
        # Sparse: reads as zeros. Large enough that the upload is still under way when the test
        # looks (256 MiB could be sent whole between two looks once uploads got faster).
        f.truncate(SIZE)
    zeros = hashlib.sha256()
    for _ in range(SIZE // (16 * MIB)):
        zeros.update(bytes(16 * MIB))
    digest = zeros.hexdigest()
    api = start_api()
    content = api.workdir / "data" / "content"

    def uploaded_so_far() -> int:
        sizes = []
        for temp in (content / ".tmp").glob(digest + ".*"):
            try:
                sizes.append(temp.stat().st_size)
            except FileNotFoundError:  # just renamed into place, or aborted
                pass
        return max(sizes, default=0)

    # One request for the whole content (the session threshold above it): the upload in progress
    # is the server's temp file; kill -9 mid-session is tests/faults/test_chunked_upload_killed.py.
    agent = make_agent(api=api, root=tree, env={"PUTPLACE_SESSION_THRESHOLD_BYTES": str(2 * SIZE)})
    agent.start(wait_for_scan=False)
    wait_until(lambda: uploaded_so_far() > 32 * MIB, 30, "the upload to be under way")
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    wait_until(lambda: not list((content / ".tmp").iterdir()), 10, "the server to drop the cut upload")
    assert local_objects(content) == {}
    assert_claims_hold(api, partial(local_objects, content))

    agent.start()
    wait_until(lambda: converged(api, "node-a", {str(big): digest}), 300, "the upload after the restart")
    assert agent.counter(HASHED) == 0  # the index kept the hash through the kill
    assert agent.counter(UPLOADED) == 1
    assert agent.stop() == 0
    assert_intact(api, {("node-a", str(big)): digest}, partial(local_objects, content))
