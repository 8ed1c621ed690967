"""Fixtures of the operator tests: the CRDs from crds/ installed once, a fresh namespace per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import KubeCluster
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
CRD_NAMES = ("putplaceinstances.putplace.io", "apikeys.putplace.io")


@pytest.fixture(scope="session")
def crds(kube: KubeCluster) -> KubeCluster:
    """The cluster with ``kubectl apply -f crds/`` done, both CRDs Established and served."""
    kube.kubectl("apply", "-f", str(CRD_DIR))
    kube.kubectl("wait", "--for=condition=Established", *(f"crd/{name}" for name in CRD_NAMES), "--timeout=60s")
    resources = ",".join(CRD_NAMES)  # discovery has caught up once kubectl resolves the names
    wait_until(
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
