"""The real MongoDB-wire server (FerretDB) and the real S3 server (MinIO) stopped -- or killed
with SIGKILL -- and started again while clients upload and an agent syncs a tree that changes
during the outage: the API answers 503 with Retry-After and reports itself degraded meanwhile,
then recovers by itself -- same process --, the agent catches up, and nothing is lost or
corrupt."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from tests.faults.conftest import api_env_for_s3
from tests.faults.integrity import Objects, assert_intact, bucket_objects, converged, local_objects, tree_state
from tests.faults.load import PrivateServer, outage_under_load, write_tree
from tests.processes import Agent, ApiProcess
from tests.servers import ferretdb
from tests.servers.s3 import S3Server
from tests.waiting import wait_until

CRASH = pytest.mark.parametrize("crash", [False, True], ids=["stopped", "killed"])


def outage_with_an_agent(
    api: ApiProcess, backend: PrivateServer, which: str, crash: bool, agent: Agent, list_objects: Objects
) -> None:
    """``outage_under_load`` while the agent syncs a tree in which, during the outage, 20 files
    are rewritten and 40 added (batched announcements, bundled uploads, history entries)."""
    initial = write_tree(agent.root, 60, 4096)
    agent.start()
    wait_until(lambda: converged(api, agent.node, initial), 30, "the agent's first sync")

    def change_the_tree() -> None:
        for path in sorted(initial)[:20]:
            Path(path).write_bytes(os.urandom(4096))
        write_tree(agent.root, 40, 4096, prefix="new")

    expected = outage_under_load(api, backend, which, crash=crash, during=change_the_tree)
    final = tree_state(agent.root)
    wait_until(lambda: converged(api, agent.node, final), 60, "the agent to catch up after the outage")
    assert agent.popen is not None and agent.popen.poll() is None, "the agent gave up"
    assert agent.stop() == 0
    expected |= {(agent.node, path): digest for path, digest in final.items()}
    assert_intact(api, expected, list_objects, superseded=set(initial.values()))


@CRASH
def test_database_server_stopped_and_restarted_under_load(
    private_ferretdb: PrivateServer,
    start_api: Callable[..., ApiProcess],
    make_agent: Callable[..., Agent],
    tmp_path: Path,
    crash: bool,
) -> None:
    url = private_ferretdb.server.env[ferretdb.ENV_URL].rstrip("/") + "/putplace"
    api = start_api(PUTPLACE_DATABASE_URL=url)
    agent = make_agent(api=api, root=tmp_path / "tree")
    objects = partial(local_objects, api.workdir / "data" / "content")
    outage_with_an_agent(api, private_ferretdb, "database", crash, agent, objects)


@CRASH
def test_s3_server_stopped_and_restarted_under_load(
    private_minio: tuple[PrivateServer, S3Server],
    start_api: Callable[..., ApiProcess],
    make_agent: Callable[..., Agent],
    tmp_path: Path,
    crash: bool,
) -> None:
    server, s3 = private_minio
    env = api_env_for_s3(s3)
    api = start_api(**env)
    agent = make_agent(api=api, root=tmp_path / "tree")
    objects = partial(bucket_objects, s3, env["PUTPLACE_STORAGE_URL"].split("/")[2])
    outage_with_an_agent(api, server, "storage", crash, agent, objects)
