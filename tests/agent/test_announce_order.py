"""One announcement per path in flight. An announcement that a 503 keeps retrying (up to a
minute) and that lands after a newer one of the same path would leave the server the older
record while the agent's index says synced: the soak's "catalogue not equal to its tree". The
agent's own pipeline runs in this process (its internals set up the race, which a process
cannot be made to hit on cue) against a real putplace-api."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from putplace_agent.index import Entry, Index
from putplace_agent.settings import load_settings
from putplace_agent.sync import Agent
from putplace_client import PutPlaceClient
from tests.api.conftest import ADMIN_KEY
from tests.processes import ApiProcess


def _entry(path: Path) -> Entry:
    st = os.lstat(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return Entry(
        os.fsencode(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
        st.st_mode, st.st_uid, st.st_gid, st.st_atime_ns, sha,
    )  # fmt: skip


def test_a_newer_record_waits_for_the_announcement_of_its_path_in_flight(
    api_process: ApiProcess, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    path = tree / "rewritten.txt"
    path.write_bytes(b"the newer version\n")
    settings = load_settings(
        None, paths=[tree], server_url=api_process.url, api_key=ADMIN_KEY, state_dir=tmp_path / "state", node_name="n1"
    )

    async def race() -> None:
        index = Index(settings.state_dir, settings.identity)
        async with PutPlaceClient(settings.server_url, ADMIN_KEY) as client:
            agent = Agent(settings, client, index)
            newer = _entry(path)
            agent._announcing.add(newer.path)  # an older version's announcement, still being retried
            await agent._announce([newer])
            assert api_process.catalogue("n1") == {}  # not sent past it
            await asyncio.sleep(0.5)
            assert agent._announce_q.qsize() == 1  # but kept: queued again, not dropped
            agent._announcing.discard(newer.path)  # the older one has landed
            await agent._announce([agent._announce_q.get_nowait()])
            assert api_process.catalogue("n1") == {str(path): newer.sha256}  # the newer one last

    asyncio.run(race())
