"""``putplace-agent`` on bad input and on its settings sources: one readable line, exit status != 0."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.agent.conftest import Agent, ApiProcess


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PUTPLACE_") and k != "NODE_NAME"}
    return subprocess.run(
        [sys.executable, "-m", "putplace_agent", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def one_line_error(r: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("putplace-agent: ")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_no_key(tmp_path: Path) -> None:
    r = run("sync", str(tmp_path), cwd=tmp_path)
    assert "no API key" in one_line_error(r)


def test_missing_path(tmp_path: Path) -> None:
    r = run("sync", str(tmp_path / "nope"), env={"PUTPLACE_API_KEY": "pp_x"}, cwd=tmp_path)
    assert "no such file or directory" in one_line_error(r)


def test_no_path(tmp_path: Path) -> None:
    r = run("sync", env={"PUTPLACE_API_KEY": "pp_x"}, cwd=tmp_path)
    assert "nothing to sync" in one_line_error(r)


def test_unreadable_key_file(tmp_path: Path) -> None:
    r = run("sync", str(tmp_path), "--api-key-file", str(tmp_path / "missing-key"), cwd=tmp_path)
    assert "cannot read the API key file" in one_line_error(r)


def test_bad_setting_value(tmp_path: Path) -> None:
    r = run("sync", str(tmp_path), "--hash-workers", "0", env={"PUTPLACE_API_KEY": "pp_x"}, cwd=tmp_path)
    assert "hash_workers" in one_line_error(r)
    r = run("sync", str(tmp_path), env={"PUTPLACE_API_KEY": "pp_x", "PUTPLACE_BATCH_SIZE": "many"}, cwd=tmp_path)
    assert "batch_size" in one_line_error(r)


def test_missing_config_file(tmp_path: Path) -> None:
    r = run("sync", str(tmp_path), "--config", str(tmp_path / "agent.toml"), cwd=tmp_path)
    assert "config file" in one_line_error(r)


def test_a_key_the_server_refuses(api_process: ApiProcess, tree: Path, make_agent: Callable[..., Agent]) -> None:
    (tree / "f").write_text("x")
    read_only = api_process.new_key("read")
    for key, expected in (("pp_not_a_real_key", "401"), (read_only, "403")):
        agent = make_agent(node="node-a", key=key)
        r = subprocess.run(agent.argv("--once"), env=agent.environ(), capture_output=True, text=True, timeout=60)
        assert expected in one_line_error(r)
        assert key not in r.stderr  # a key is never logged


def test_settings_sources_and_their_precedence(
    api_process: ApiProcess, tree: Path, tmp_path: Path, make_agent: Callable[..., Agent]
) -> None:
    """A TOML file, then the environment, then flags: each wins over the one before."""
    (tree / "kept.txt").write_text("kept")
    (tree / "skipped.log").write_text("skipped")
    key_file = tmp_path / "key"
    key_file.write_text(api_process.new_key("write") + "\n")
    config = tmp_path / "agent.toml"
    config.write_text(
        f'server_url = "{api_process.url}"\napi_key_file = "{key_file}"\nnode_name = "from-file"\n'
        f'exclude = ["*.log"]\nstate_dir = "{tmp_path / "state"}"\n'
    )
    r = run("sync", str(tree), "--once", "--config", str(config), env={"NODE_NAME": "from-env"})
    assert r.returncode == 0, r.stderr
    assert list(api_process.catalogue("from-env")) == [str(tree / "kept.txt")]

    r = run("sync", str(tree), "--once", "--config", str(config), "--node-name", "from-flag",
            env={"NODE_NAME": "from-env"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert list(api_process.catalogue("from-flag")) == [str(tree / "kept.txt")]
    assert api_process.catalogue("from-file") == {}
