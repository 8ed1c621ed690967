"""Fixtures of the operator tests: the CRDs from crds/ installed once, a fresh namespace per test."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.servers import KubeCluster

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
CRD_NAMES = ("putplaceinstances.putplace.io", "apikeys.putplace.io")


def eventually(check: Callable[[], T | None], *, timeout: float = 60.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"{what} not reached within {timeout:.0f} s")
        time.sleep(0.25)


@pytest.fixture(scope="session")
def crds(kube: KubeCluster) -> KubeCluster:
    """The cluster with ``kubectl apply -f crds/`` done, both CRDs Established and served."""
    kube.kubectl("apply", "-f", str(CRD_DIR))
    kube.kubectl("wait", "--for=condition=Established", *(f"crd/{name}" for name in CRD_NAMES), "--timeout=60s")
    resources = ",".join(CRD_NAMES)  # discovery has caught up once kubectl resolves the names
    eventually(
        lambda: kube.kubectl("get", resources, "--all-namespaces", check=False).returncode == 0,
        what=f"{resources} served",
    )
    return kube


@pytest.fixture
def namespace(crds: KubeCluster) -> Iterator[str]:
    """A fresh namespace (deleted afterwards without waiting)."""
    name = f"crd-{uuid.uuid4().hex[:8]}"
    crds.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    crds.kubectl("delete", "namespace", name, "--wait=false")
