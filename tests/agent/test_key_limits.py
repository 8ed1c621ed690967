"""An agent running with a key limited to its node and tree, and with a quota: it catalogues its
files, stores what the quota allows, reports the rest as refused, and goes on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.agent.conftest import Agent, ApiProcess
from tests.agent.test_sync import disk_view, write


def test_an_agent_with_a_limited_key_and_a_quota(
    api_process: ApiProcess, tree: Path, make_agent: Callable[..., Agent]
) -> None:
    for n in range(5):
        write(tree / f"f{n}", f"content {n}\n".encode())
    with api_process.http() as admin:
        created = admin.post(
            "/api_keys",
            json={"name": "node-a", "scopes": ["write"], "hostnames": ["node-a"], "path_prefixes": [str(tree)],
                  "max_files": 3},
        ).json()  # fmt: skip
    code, summary = make_agent(node="node-a", key=created["api_key"]).once()

    # Every record is announced; three contents are stored, two refused by the quota.
    assert code == 1, summary  # files left failed: --once says so
    assert api_process.catalogue("node-a") == disk_view(tree)
    assert summary["uploaded"] == 3
    with api_process.http() as admin:
        stored = [
            f["filepath"] for f in admin.get("/files", params={"hostname": "node-a"}).json()["items"]
            if f["has_file_content"]
        ]  # fmt: skip
        usage = next(k for k in admin.get("/api_keys").json() if k["_id"] == created["_id"])
    assert len(stored) == 3 and (usage["used_files"], usage["max_files"]) == (3, 3)

    # The same key on another node's name is refused outright: the agent stops with one line.
    code, _ = make_agent(node="node-b", key=created["api_key"]).once()
    assert code == 2
    assert api_process.catalogue("node-b") == {}
