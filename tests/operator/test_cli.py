"""``putplace-operator`` on the command line: bad settings are one line and exit 2; ``cleanup``
that cannot reach the cluster is one line and exit 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


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


def test_cleanup_without_a_reachable_cluster_is_one_line_and_exit_1(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            "users": [{"name": "u", "user": {"token": "x"}}],
        })
    )  # fmt: skip
    r = run("cleanup", "--timeout", "5", KUBECONFIG=str(kubeconfig), PUTPLACE_OPERATOR_LOG_FORMAT="text")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("putplace-operator cleanup: Kubernetes API unreachable: ")


def test_cleanup_namespace_flags_exclude_each_other_and_it_has_a_deadline() -> None:
    r = run("cleanup", "--namespace", "a", "--all-namespaces")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr
    assert "--timeout SECONDS" in run("cleanup", "--help").stdout
