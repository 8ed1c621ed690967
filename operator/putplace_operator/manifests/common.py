"""What every child of a PutPlaceInstance shares: names, labels, owner reference, security context.

Pure functions of the instance: no Kubernetes calls here, so every manifest can be tested
(and dry-run against a real API server) without an operator running.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

__all__ = [
    "API_PORT",
    "AGENT_METRICS_PORT",
    "Instance",
    "InstanceChild",
    "Manifest",
    "Resource",
    "checksum",
    "child_secret",
    "container_security",
    "labels",
    "metadata",
    "pod_security",
    "selector",
]

Manifest = dict[str, Any]

API_PORT = 8000
AGENT_METRICS_PORT = 9100
GROUP = "putplace.io"
VERSION = "v1alpha1"
MANAGED_BY = "putplace-operator"


@dataclass(frozen=True)
class Resource:
    """A namespaced custom object as the operator reads it (defaults already applied by the API server)."""

    name: str
    namespace: str
    uid: str
    spec: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Self:
        meta = body["metadata"]
        return cls(meta["name"], meta["namespace"], meta["uid"], body.get("spec") or {})


@dataclass(frozen=True)
class InstanceChild(Resource):
    """An object made for one PutPlaceInstance of its namespace (an ApiKey, a WebhookSubscription),
    delivered in a Secret."""

    @property
    def instance(self) -> str:
        return str(self.spec["instanceRef"]["name"])

    @property
    def secret_name(self) -> str:
        return str(self.spec.get("secretName") or self.name)


def child_secret(
    obj: InstanceChild, kind: str, component: str, annotations: Mapping[str, str], data: Mapping[str, str]
) -> Manifest:
    """The Secret delivering what ``obj`` (of ``kind``) was made for, owned by it (deleted with it)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": obj.secret_name,
            "namespace": obj.namespace,
            "labels": {
                "app.kubernetes.io/name": "putplace",
                "app.kubernetes.io/instance": obj.instance,
                "app.kubernetes.io/component": component,
                "app.kubernetes.io/managed-by": MANAGED_BY,
            },
            "annotations": dict(annotations),
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": kind,
                    "name": obj.name,
                    "uid": obj.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


@dataclass(frozen=True)
class Instance(Resource):
    """A PutPlaceInstance."""

    # Names of the children (the CRD caps instance names at 40 characters so these fit in 63).
    @property
    def api_name(self) -> str:
        return f"{self.name}-api"

    @property
    def agent_name(self) -> str:
        return f"{self.name}-agent"

    @property
    def admin_secret(self) -> str:
        return f"{self.name}-admin-key"

    @property
    def agent_key_secret(self) -> str:
        return f"{self.name}-agent-key"

    @property
    def service_url(self) -> str:
        return f"http://{self.api_name}.{self.namespace}.svc:80"

    @property
    def uses_sqlite(self) -> bool:
        return "sqlite" in self.spec.get("database", {"sqlite": {}})

    @property
    def uses_local_storage(self) -> bool:
        return "local" in self.spec.get("storage", {"local": {}})


def labels(instance: Instance, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "putplace",
        "app.kubernetes.io/instance": instance.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def selector(instance: Instance, component: str) -> dict[str, str]:
    """The subset of labels a selector uses: stable for the life of the instance."""
    return {k: v for k, v in labels(instance, component).items() if k != "app.kubernetes.io/managed-by"}


def metadata(instance: Instance, name: str, component: str, **extra: Any) -> dict[str, Any]:
    """Name, namespace, labels, and the owner reference that makes deletion cascade."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": instance.namespace,
        "labels": labels(instance, component),
        "ownerReferences": [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "PutPlaceInstance",
                "name": instance.name,
                "uid": instance.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    meta.update(extra)
    return meta


def pod_security(*, non_root: bool = True) -> dict[str, Any]:
    security: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if non_root:
        security |= {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532}
    return security


def container_security(*, add: tuple[str, ...] = ()) -> dict[str, Any]:
    capabilities: dict[str, Any] = {"drop": ["ALL"]}
    if add:
        capabilities["add"] = list(add)
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": capabilities}


def checksum(value: Any) -> str:
    """A stable digest of some configuration: put on a pod template, a change rolls the pods."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
