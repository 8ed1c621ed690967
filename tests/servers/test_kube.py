"""Smoke tests of the Kubernetes control plane fixture: the API, controllers, scheduler and kwok."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.servers import KubeCluster
from tests.waiting import wait_until


@pytest.fixture
def namespace(kube: KubeCluster) -> Iterator[str]:
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false")


def fake_nodes(kube: KubeCluster) -> set[str]:
    nodes = kube.get("nodes")["items"]
    return {n["metadata"]["name"] for n in nodes if n["metadata"].get("annotations", {}).get("kwok.x-k8s.io/node")}


def running_pods(kube: KubeCluster, namespace: str, app: str, count: int) -> list[dict[str, Any]] | None:
    """The Running pods labelled app=``app``, once there are exactly ``count`` of them."""
    pods = kube.get("pods", f"--namespace={namespace}", f"--selector=app={app}")["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
    return running if len(running) == count else None


def workload(kind: str, name: str, **spec: Any) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {
            **spec,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": "registry.invalid/never-pulled:1"}]},
            },
        },
    }


def test_namespace_is_created_and_active(kube: KubeCluster, namespace: str) -> None:
    assert kube.get("namespace", namespace)["status"]["phase"] == "Active"
    assert kube.server.startswith("https://127.0.0.1:")
    version = json.loads(kube.kubectl("get", "--raw", "/version").stdout)
    assert version["gitVersion"].startswith("v1.36.")


def test_deployment_pods_run_on_fake_nodes(kube: KubeCluster, namespace: str) -> None:
    kube.apply(workload("Deployment", "web", replicas=2), namespace=namespace)
    pods = wait_until(lambda: running_pods(kube, namespace, "web", 2), what="2 Running pods of Deployment web")
    assert {p["spec"]["nodeName"] for p in pods} <= fake_nodes(kube)
    assert all(p["status"].get("podIP") for p in pods)
    kube.kubectl("rollout", "status", "deployment/web", f"--namespace={namespace}", "--timeout=60s")
    assert kube.get("deployment", "web", f"--namespace={namespace}")["status"]["availableReplicas"] == 2


def test_daemonset_runs_one_pod_per_fake_node(kube: KubeCluster, namespace: str) -> None:
    nodes = fake_nodes(kube)
    assert len(nodes) == 2
    kube.apply(workload("DaemonSet", "agent"), namespace=namespace)
    pods = wait_until(
        lambda: running_pods(kube, namespace, "agent", len(nodes)), what="one Running DaemonSet pod per fake node"
    )
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(nodes)


def test_custom_resource_definition_and_object(kube: KubeCluster, namespace: str) -> None:
    group = "smoke.putplace.test"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                    "required": ["size"],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    kube.apply(crd)
    kube.wait_established(f"widgets.{group}")
    widget = {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 3}}
    kube.apply(widget, namespace=namespace)
    got = kube.get(f"widgets.{group}", "w1", f"--namespace={namespace}")
    assert got["spec"] == {"size": 3}
    invalid = {**widget, "metadata": {"name": "w2"}, "spec": {"size": 0}}
    rejected = kube.kubectl("apply", f"--namespace={namespace}", "-f", "-", input=json.dumps(invalid), check=False)
    assert rejected.returncode != 0
    assert "spec.size" in rejected.stderr
