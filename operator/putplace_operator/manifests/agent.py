"""The node agents of an instance: a DaemonSet and the write-only ApiKey it runs with.

The agent must read any file under the host paths, which belong to many users: it runs as root
with every capability dropped but DAC_READ_SEARCH (read and search, never write), host paths
mounted read-only, a read-only root filesystem, and a hostPath state dir for its index so a
restarted pod re-hashes nothing. Such pods need the namespace's pod-security level to be
``privileged`` (hostPath volumes are outside ``baseline`` and ``restricted``).
"""

from __future__ import annotations

from typing import Any

from putplace_operator.manifests.api import KEY_FIELD
from putplace_operator.manifests.common import (
    AGENT_METRICS_PORT,
    Instance,
    Manifest,
    container_security,
    metadata,
    pod_security,
    selector,
)

__all__ = ["HOST_ROOT", "STATE_ROOT", "agent_key", "daemon_set", "pod_monitor"]

COMPONENT = "agent"
HOST_ROOT = "/host"  # where host paths appear in the pod; stripped again in the catalogue
STATE_ROOT = "/var/lib/putplace-agent"


def agent_key(i: Instance) -> Manifest:
    """The agents' one key: write-only, and limited to the host paths they catalogue.

    One key for the DaemonSet, not one per node: every pod of a DaemonSet mounts the same Secret,
    so a key bound to a node would need a pod spec per node or a way for a pod to fetch its
    node's key (a right to read every node's key, which is what a per-node key is meant to take
    away). A node's agent can therefore still write records of other nodes' names, within the
    host paths, but it reads nothing (write scope only) and touches no other path.
    """
    return {
        "apiVersion": "putplace.io/v1alpha1",
        "kind": "ApiKey",
        "metadata": metadata(i, i.agent_name, COMPONENT),
        "spec": {
            "instanceRef": {"name": i.name},
            "scopes": ["write"],
            "secretName": i.agent_key_secret,
            "description": "node agents of this instance (created by the operator)",
            "pathPrefixes": sorted(set(_host_paths(i))),
        },
    }


def _host_paths(i: Instance) -> list[str]:
    return list(i.spec.get("agent", {}).get("hostPaths", ["/var/log"]))


def _volume_name(index: int) -> str:
    return f"host-{index}"


def daemon_set(i: Instance) -> Manifest | None:
    agent = i.spec.get("agent", {})
    if not agent.get("enabled", True):
        return None
    image = agent.get("image", {})
    host_paths = _host_paths(i)
    args = [
        "putplace-agent", "sync", *(HOST_ROOT + p for p in host_paths),
        "--strip-prefix", HOST_ROOT,
        "--server", i.service_url,
        "--api-key-file", "/etc/putplace/api-key",
        "--state-dir", f"{STATE_ROOT}/state",
        "--metrics-port", str(AGENT_METRICS_PORT), "--metrics-host", "0.0.0.0",
        "--rescan-interval", str(agent.get("rescanIntervalSeconds", 3600)),
    ]  # fmt: skip
    for pattern in agent.get("excludes", []):
        args += ["--exclude", pattern]
    volumes: list[dict[str, Any]] = [
        {"name": _volume_name(n), "hostPath": {"path": p, "type": ""}} for n, p in enumerate(host_paths)
    ]
    mounts: list[dict[str, Any]] = [
        {"name": _volume_name(n), "mountPath": HOST_ROOT + p, "readOnly": True} for n, p in enumerate(host_paths)
    ]
    # One state dir per instance on the node, so two instances never share an index.
    state = f"{STATE_ROOT}/{i.namespace}/{i.name}"
    volumes += [
        {"name": "state", "hostPath": {"path": state, "type": "DirectoryOrCreate"}},
        {
            "name": "api-key",
            "secret": {"secretName": i.agent_key_secret, "items": [{"key": KEY_FIELD, "path": "api-key"}]},
        },
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts += [
        {"name": "state", "mountPath": f"{STATE_ROOT}/state"},
        {"name": "api-key", "mountPath": "/etc/putplace", "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    container: dict[str, Any] = {
        "name": "agent",
        "image": f"{image.get('repository', 'ghcr.io/putplace/putplace-agent')}:{image.get('tag', '0.1.0')}",
        "imagePullPolicy": image.get("pullPolicy", "IfNotPresent"),
        "args": args,
        "env": [
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
        ],
        "ports": [{"name": "metrics", "containerPort": AGENT_METRICS_PORT, "protocol": "TCP"}],
        "securityContext": {**container_security(add=("DAC_READ_SEARCH",)), "runAsUser": 0, "runAsNonRoot": False},
        "volumeMounts": mounts,
    }
    if agent.get("resources"):
        container["resources"] = agent["resources"]
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": pod_security(non_root=False),
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 30,  # the agent drains for up to 20 s on SIGTERM
    }
    if agent.get("nodeSelector"):
        pod["nodeSelector"] = agent["nodeSelector"]
    if agent.get("tolerations"):
        pod["tolerations"] = agent["tolerations"]
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": metadata(i, i.agent_name, COMPONENT),
        "spec": {
            "selector": {"matchLabels": selector(i, COMPONENT)},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {"metadata": {"labels": selector(i, COMPONENT)}, "spec": pod},
        },
    }


def pod_monitor(i: Instance) -> Manifest:
    """Prometheus scrapes every agent pod (the agents' dashboard and stale-scan alert need them)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": metadata(i, i.agent_name, COMPONENT),
        "spec": {
            "selector": {"matchLabels": selector(i, COMPONENT)},
            "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics"}],
        },
    }
