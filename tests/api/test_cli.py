"""``putplace-api`` as a user meets it: --help, and bad settings as one readable line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from putplace_api.settings import Settings
from tests.processes import ApiProcess
from tests.servers.base import free_ports


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PUTPLACE_")}
    return subprocess.run(
        [sys.executable, "-m", "putplace_api.cli", *args],
        env=clean | env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_lists_every_setting(tmp_path: Path) -> None:
    r = _run(["--help"], {}, tmp_path)
    assert r.returncode == 0
    for name in Settings.model_fields:
        assert f"PUTPLACE_{name.upper()}" in r.stdout
    assert "--port" in r.stdout and "--workers" in r.stdout
    assert all(command in r.stdout for command in ("serve", "verify", "gc"))


def test_serve_command_takes_the_serve_flags(tmp_path: Path) -> None:
    port, other = free_ports(2)
    args = ["--data-dir", str(tmp_path / "elsewhere"), "serve", "--port", str(port)]
    api = ApiProcess(tmp_path, port=port, args=args, env={"PUTPLACE_PORT": str(other)})
    api.start()  # healthy on the port of the flag, not of the environment
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        assert (tmp_path / "elsewhere" / "putplace.db").exists()  # the flag before the command counts too
    finally:
        api.stop()


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"PUTPLACE_PORT": "eighty"}, "PUTPLACE_PORT"),
        ({"PUTPLACE_LOG_FORMAT": "xml"}, "PUTPLACE_LOG_FORMAT"),
        ({"PUTPLACE_DATABASE_URL": "postgres://x/y"}, "PUTPLACE_DATABASE_URL"),
        ({"PUTPLACE_STORAGE_URL": "ftp://x/y"}, "PUTPLACE_STORAGE_URL"),
        ({"PUTPLACE_STORAGE_URL": "s3:///no-bucket"}, "s3://bucket/prefix"),
    ],
)
def test_bad_settings_exit_2_with_one_line(tmp_path: Path, env: dict[str, str], words: str) -> None:
    r = _run([], env | {"PUTPLACE_DATA_DIR": str(tmp_path / "d")}, tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in r.stderr
