"""``kill -9`` of the agent, or of the API, in the middle of a chunked upload of a multi-GB file,
on both backend pairs: the upload session resumes, and the server receives only the bytes it did
not hold -- measured by its own counters, not by a clock."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.faults.conftest import BackendApi
from tests.processes import Agent, ApiProcess
from tests.waiting import wait_until

MIB = 1024 * 1024
SIZE = 2 * 1024 * MIB
ZEROS_2_GIB = "a7c744c13cc101ed66c29f672f92455547889cc586ce6d44fe76ae824958ea51"  # sha256 of 2 GiB of zeros
HELD = "putplace_upload_session_held_bytes_total"
RECEIVED = "putplace_upload_session_received_bytes_total"


class Uploading(NamedTuple):
    api: ApiProcess
    big: Path
    agent: Agent


def stored(api: ApiProcess) -> bool:
    with api.http() as c:
        r = c.get(f"/get_file/{ZEROS_2_GIB}")
    return r.status_code == 200 and bool(r.json()["has_file_content"])


@pytest.fixture
def uploading(tmp_path: Path, backend_api: BackendApi, make_agent: Callable[..., Agent]) -> Uploading:
    """An agent syncing a sparse 2 GiB file (zeros that take no room), its upload under way."""
    tree = tmp_path / "tree"
    tree.mkdir()
    big = tree / "big.img"
    with big.open("wb") as f:
        f.truncate(SIZE)
    api = backend_api.api
    agent = make_agent(api=api, root=tree, node="node-a", env={"PUTPLACE_SESSION_PARALLEL_CHUNKS": "2"})
    agent.start()
    wait_until(lambda: api.counter(HELD) >= 256 * MIB, 180, "the chunked upload to be under way")
    return Uploading(api, big, agent)


def _assert_catalogued_whole(api: ApiProcess, big: Path) -> None:
    assert api.catalogue("node-a") == {str(big): ZEROS_2_GIB}
    with api.http() as c:  # served to its last byte
        r = c.get(f"/content/{ZEROS_2_GIB}", headers={"Range": f"bytes={SIZE - 4}-"})
        assert r.status_code == 206 and r.content == bytes(4)


def test_agent_killed_mid_chunked_upload_resumes_sending_only_what_is_missing(uploading: Uploading) -> None:
    api, big, agent = uploading
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    # The server has seen the cut: no chunk is being received any more.
    wait_until(lambda: api.counter("putplace_upload_session_chunks_in_progress") == 0, 60, "the cut chunks to end")
    held_before, received_before = api.counter(HELD), api.counter(RECEIVED)
    assert held_before < SIZE and not stored(api), "killed too late to show anything"

    agent.start()
    wait_until(lambda: stored(api), 600, "the content after the restart")
    assert agent.counter("putplace_agent_files_hashed_total") == 0  # the index remembered the hash
    # Only what the server did not hold went up again, in bytes; each chunk was kept once.
    assert api.counter(RECEIVED) - received_before == SIZE - held_before
    assert api.counter(HELD) == SIZE
    assert api.counter('putplace_upload_sessions_total{outcome="completed"}') == 1  # its chunks are gone
    _assert_catalogued_whole(api, big)
    assert agent.stop() == 0


def test_api_killed_mid_chunked_upload_keeps_the_chunks_it_held(uploading: Uploading) -> None:
    api, big, agent = uploading
    held_before = api.counter(HELD)  # held for sure (the chunks being written as it dies may be too)
    api.kill()
    assert held_before < SIZE
    api.start()  # same port, same database and storage: the agent retries until it answers
    wait_until(lambda: stored(api), 600, "the content after the API's restart")
    # The chunks held before the kill survived it: the restarted API took at most the rest.
    assert api.counter(HELD) <= SIZE - held_before
    _assert_catalogued_whole(api, big)
    assert agent.stop() == 0
