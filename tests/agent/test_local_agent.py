"""The README's run command: ``putplace-api --sync DIR`` serves the API and keeps DIR catalogued."""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.servers.base import free_ports
from tests.test_readme import _commands
from tests.waiting import wait_until


def test_the_readme_run_command_syncs_a_folder_continuously(tmp_path: Path) -> None:
    run_command = _commands()[0].split("&&")[-1]
    args = shlex.split(run_command)[1:]  # what follows .venv/bin/putplace-api
    assert "--sync" in args
    synced = tmp_path / args[args.index("--sync") + 1]
    synced.mkdir()
    (synced / "before.txt").write_text("there before the start\n")
    port = free_ports(1)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUTPLACE_")}
    api = subprocess.Popen(
        [sys.executable, "-m", "putplace_api.cli", *args, "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "out.log").open("wb"),
        start_new_session=True,
    )
    try:
        admin_key_file = tmp_path / "putplace-data" / "admin-key"
        wait_until(admin_key_file.exists, 30, "the API to start")
        http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": admin_key_file.read_text().strip()}
        )

        def listening() -> bool:
            # The key file is written during start-up, a moment before the port is served.
            try:
                return http.get("/healthz").status_code == 200
            except httpx.ConnectError:
                return False

        wait_until(listening, 30, "the API to listen")

        def catalogue() -> dict[str, str]:
            items = http.get("/files", params={"limit": 1000}).raise_for_status().json()["items"]
            return {i["filepath"]: i["sha256"] for i in items}

        wait_until(lambda: str(synced / "before.txt") in catalogue(), 30, "the initial sync")
        new = synced / "after.txt"
        new.write_text("written while it runs\n")
        # Through the watcher: the agent's next full rescan is an hour away. How fast: bench/agent_latency.py.
        wait_until(lambda: catalogue().get(str(new)) == hashlib.sha256(new.read_bytes()).hexdigest(), 30, "a change")
        # The agent holds a write-only key of its own, kept private.
        agent_key = tmp_path / "putplace-data" / "agent-key"
        assert agent_key.stat().st_mode & 0o777 == 0o600
        keys = {k["name"]: k["scopes"] for k in http.get("/api_keys").json()}
        assert keys["local agent"] == ["write"]
    finally:
        os.killpg(api.pid, signal.SIGINT)  # Ctrl+C in a terminal reaches the whole group
        code = api.wait(60)
    assert code == 0, (tmp_path / "out.log").read_text()[-2000:]
    leftovers = subprocess.run(["pgrep", "-s", str(api.pid)], capture_output=True, text=True).stdout
    assert leftovers == "", "the local agent outlived the API"
