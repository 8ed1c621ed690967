"""Shared by the chart tests: helm run against the chart, and the operator tests' cluster fixtures
(the CRDs applied, a fresh namespace)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from tests.operator.conftest import crds, namespace

__all__ = ["CHART", "ROOT", "crds", "find", "namespace", "render", "run_helm"]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "putplace"


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, f"helm {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    return r


def render(helm: Path, *sets: str, namespace: str = "putplace-system") -> list[dict[str, Any]]:
    args = ["template", "pp", str(CHART), "-n", namespace, "--kube-version", "1.36.0"]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(run_helm(helm, *args).stdout) if d]


def find(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]
