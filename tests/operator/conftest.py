"""Fixtures of the operator tests: the CRDs from crds/ installed once, a fresh namespace per test,
and the operator as a real ``putplace-operator`` process running as a ServiceAccount bound only
to the ClusterRole the chart ships (``operator/deploy/clusterrole.yaml``), RBAC on."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]

from tests.servers import KubeCluster
from tests.servers.base import Process, free_ports, tail
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
CLUSTER_ROLE = ROOT / "operator" / "deploy" / "clusterrole.yaml"
CLEANUP_ROLE = ROOT / "operator" / "deploy" / "cleanup-clusterrole.yaml"
CRD_NAMES = ("putplaceinstances.putplace.io", "apikeys.putplace.io", "webhooksubscriptions.putplace.io")
OPERATOR_NAMESPACE = "putplace-system"
OPERATOR_ACCOUNT = "putplace-operator"


@pytest.fixture(scope="session")
def crds(kube: KubeCluster) -> KubeCluster:
    """The cluster with ``kubectl apply -f crds/`` done, every CRD Established and served."""
    kube.kubectl("apply", "-f", str(CRD_DIR))
    kube.wait_established(*CRD_NAMES)
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


@pytest.fixture(scope="session")
def operator_kubeconfig(crds: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig for the ServiceAccount bound to the chart's ClusterRole, and to nothing else."""
    role = yaml.safe_load(CLUSTER_ROLE.read_text())
    crds.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NAMESPACE}},
        role,
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": role["metadata"]["name"]},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]},
         "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NAMESPACE}]},
    )  # fmt: skip
    path = tmp_path_factory.mktemp("operator") / "kubeconfig"
    return crds.token_kubeconfig(OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, path)


@dataclass
class OperatorProcess:
    """``putplace-operator`` as deployed: its own process, kubeconfig and PUTPLACE_OPERATOR_* env."""

    kubeconfig: Path
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    ports: list[int] = field(default_factory=lambda: free_ports(2))
    process: Process | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "operator.log"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[1]}/metrics"

    @property
    def liveness_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}/healthz"

    def start(self, *args: str) -> None:
        env = {
            "KUBECONFIG": str(self.kubeconfig),
            "PUTPLACE_OPERATOR_LIVENESS_PORT": str(self.ports[0]),
            "PUTPLACE_OPERATOR_METRICS_PORT": str(self.ports[1]),
            "PUTPLACE_OPERATOR_BIND_ADDRESS": "127.0.0.1",
            "PUTPLACE_OPERATOR_LOG_FORMAT": "text",
            **self.env,
        }
        argv = [sys.executable, "-m", "putplace_operator.cli", *args]
        self.process = Process.spawn("operator", argv, cwd=self.workdir, log_path=self.log_path, env=env)
        self.process.wait_ready(self._live, timeout=60)

    def _live(self) -> bool:
        try:
            return httpx.get(self.liveness_url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies or the OOM killer strikes."""
        assert self.process is not None and self.process.popen is not None
        self.process.popen.send_signal(signal.SIGKILL)
        self.process.popen.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_log(self) -> None:
        """Nothing crashed, and RBAC never said no (least privilege must still be enough)."""
        text = self.log()
        # RBAC refusals read `... is forbidden: User "system:serviceaccount:..." cannot ...`.
        for bad in ("Traceback", "is forbidden: User", "Not enough permissions"):
            assert bad not in text, f"{bad!r} in the operator's log:\n{tail(self.log_path, 60)}"


def cleanup(kubeconfig: Path, namespaces: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """The hook Job's command, with its environment (the operator's namespaces)."""
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "PUTPLACE_OPERATOR_NAMESPACES": namespaces,
        "PUTPLACE_OPERATOR_LOG_FORMAT": "text",
    }
    argv = [sys.executable, "-m", "putplace_operator.cli", "cleanup", "--timeout", str(timeout)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout + 60)


def admin_secret(instance: str, namespace: str, key: str) -> dict[str, Any]:
    """An instance's admin-key Secret made ahead of the instance: the operator keeps a given key."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{instance}-admin-key", "namespace": namespace},
        "data": {"api-key": base64.b64encode(key.encode()).decode()},
    }


def condition(obj: dict[str, Any], kind: str) -> tuple[str, str] | None:
    """(status, reason) of a condition of a custom object."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return str(c["status"]), str(c.get("reason"))
    return None


def monitoring_crds(*kinds: str) -> list[dict[str, Any]]:
    """Stand-ins for the Prometheus operator's CRDs (monitoring.coreos.com/v1 ``kinds``, any
    content accepted): PutPlace only cares whether the cluster serves them."""
    return [
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{kind.lower()}s.monitoring.coreos.com"},
            "spec": {
                "group": "monitoring.coreos.com",
                "scope": "Namespaced",
                "names": {"kind": kind, "plural": f"{kind.lower()}s", "singular": kind.lower()},
                "versions": [{
                    "name": "v1", "served": True, "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }],
            },
        }
        for kind in kinds
    ]  # fmt: skip
