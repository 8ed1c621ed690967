"""``putplace-operator`` on the command line: bad settings are one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "putplace_operator.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_lists_every_setting() -> None:
    r = run("--help")
    assert r.returncode == 0
    for name in ("PUTPLACE_OPERATOR_NAMESPACES", "PUTPLACE_OPERATOR_API_URL_TEMPLATE", "--namespace"):
        assert name in r.stdout


def test_a_bad_setting_is_one_line_and_exit_2() -> None:
    r = run(PUTPLACE_OPERATOR_RECONCILE_SECONDS="-1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "putplace-operator: PUTPLACE_OPERATOR_RECONCILE_SECONDS: Input should be greater than 0"
    ]


def test_namespace_flags_exclude_each_other() -> None:
    r = run("--namespace", "a", "--all-namespaces")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr
