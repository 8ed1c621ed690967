"""The API service of an instance: ServiceAccount, ConfigMap, volumes, Deployment, Service,
PodDisruptionBudget, ServiceMonitor, and the Secret holding its bootstrap admin key."""

from __future__ import annotations

import base64
from typing import Any

from putplace_operator.manifests.common import (
    API_PORT,
    Instance,
    Manifest,
    checksum,
    container_security,
    metadata,
    pod_security,
    selector,
)

__all__ = [
    "KEY_FIELD",
    "admin_secret",
    "config_map",
    "deployment",
    "metrics_key",
    "pod_disruption_budget",
    "service",
    "service_account",
    "service_monitor",
    "volume_claims",
]

COMPONENT = "api"
KEY_FIELD = "api-key"  # the field holding a key in every Secret the operator writes
DATA_DIR = "/data"


def service_account(i: Instance) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(i, i.api_name, COMPONENT),
        "automountServiceAccountToken": False,  # the API never talks to Kubernetes
    }


def admin_secret(i: Instance, key: str) -> Manifest:
    """Created once with a generated key; the operator never replaces it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(i, i.admin_secret, COMPONENT),
        "type": "Opaque",
        "data": {KEY_FIELD: base64.b64encode(key.encode()).decode()},
    }


def settings(i: Instance) -> dict[str, str]:
    """The API's ``PUTPLACE_*`` settings that are not secret."""
    spec = i.spec
    env = {
        "PUTPLACE_HOST": "0.0.0.0",
        "PUTPLACE_PORT": str(API_PORT),
        "PUTPLACE_DATA_DIR": DATA_DIR,
        "PUTPLACE_LOG_FORMAT": "json",
    }
    if i.uses_sqlite:
        env["PUTPLACE_DATABASE_URL"] = f"sqlite:///{DATA_DIR}/db/putplace.db"
    storage = spec.get("storage", {})
    if i.uses_local_storage:
        env["PUTPLACE_STORAGE_URL"] = f"file://{DATA_DIR}/content"
    else:
        s3 = storage["s3"]
        env["PUTPLACE_STORAGE_URL"] = f"s3://{s3['bucket']}/{s3.get('prefix', '')}"
        for name, value in (
            ("PUTPLACE_S3_ENDPOINT_URL", s3.get("endpoint")),
            ("PUTPLACE_S3_REGION", s3.get("region")),
            ("PUTPLACE_S3_ADDRESSING_STYLE", s3.get("addressingStyle")),
        ):
            if value:
                env[name] = value
    rate = spec.get("rateLimit") or {}
    if "requestsPerSecond" in rate:
        env["PUTPLACE_RATE_LIMIT"] = str(rate["requestsPerSecond"])
    if "burst" in rate:
        env["PUTPLACE_RATE_LIMIT_BURST"] = str(rate["burst"])
    if "maxUploadBytes" in spec:
        env["PUTPLACE_MAX_UPLOAD_BYTES"] = str(spec["maxUploadBytes"])
    if spec.get("allowedMimeTypes"):
        env["PUTPLACE_ALLOWED_MIME_TYPES"] = ",".join(spec["allowedMimeTypes"])
    otlp = (spec.get("tracing") or {}).get("otlpEndpoint")
    if otlp:
        env["PUTPLACE_OTLP_ENDPOINT"] = otlp
    return env


def config_map(i: Instance) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(i, i.api_name, COMPONENT),
        "data": settings(i),
    }


def _claim(i: Instance, name: str, volume: dict[str, Any]) -> Manifest:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": str(volume.get("storageSize", "1Gi"))}},
    }
    if volume.get("storageClassName"):
        spec["storageClassName"] = volume["storageClassName"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(i, name, COMPONENT),
        "spec": spec,
    }


def volume_claims(i: Instance) -> list[Manifest]:
    """The embedded database and local content each on a ReadWriteOnce claim (hence 1 replica)."""
    claims = []
    if i.uses_sqlite:
        claims.append(_claim(i, f"{i.name}-db", i.spec.get("database", {}).get("sqlite", {})))
    if i.uses_local_storage:
        claims.append(_claim(i, f"{i.name}-content", i.spec.get("storage", {}).get("local", {})))
    return claims


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _env(i: Instance) -> list[dict[str, Any]]:
    env = [_secret_env("PUTPLACE_ADMIN_KEY", i.admin_secret, KEY_FIELD)]
    mongodb = i.spec.get("database", {}).get("mongodb")
    if mongodb:
        ref = mongodb["uriSecretRef"]
        env.append(_secret_env("PUTPLACE_DATABASE_URL", ref["name"], ref.get("key", "uri")))
    s3 = i.spec.get("storage", {}).get("s3")
    if s3 and s3.get("credentialsSecretRef"):
        ref = s3["credentialsSecretRef"]
        env.append(_secret_env("PUTPLACE_S3_ACCESS_KEY_ID", ref["name"], ref.get("accessKeyIdKey", "accessKeyId")))
        env.append(
            _secret_env("PUTPLACE_S3_SECRET_ACCESS_KEY", ref["name"], ref.get("secretAccessKeyKey", "secretAccessKey"))
        )
    return env


def _volumes(i: Instance) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}, {"name": "data", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "data", "mountPath": DATA_DIR}]
    if i.uses_sqlite:
        volumes.append({"name": "db", "persistentVolumeClaim": {"claimName": f"{i.name}-db"}})
        mounts.append({"name": "db", "mountPath": f"{DATA_DIR}/db"})
    if i.uses_local_storage:
        volumes.append({"name": "content", "persistentVolumeClaim": {"claimName": f"{i.name}-content"}})
        mounts.append({"name": "content", "mountPath": f"{DATA_DIR}/content"})
    return volumes, mounts


def deployment(i: Instance) -> Manifest:
    spec = i.spec
    image = spec.get("image", {})
    volumes, mounts = _volumes(i)
    probe = {"periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3}
    container: dict[str, Any] = {
        "name": "api",
        "image": f"{image.get('repository', 'ghcr.io/putplace/putplace-api')}:{image.get('tag', '0.1.0')}",
        "imagePullPolicy": image.get("pullPolicy", "IfNotPresent"),
        "args": ["putplace-api"],
        "envFrom": [{"configMapRef": {"name": i.api_name}}],
        "env": _env(i),
        "ports": [{"name": "http", "containerPort": API_PORT, "protocol": "TCP"}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, **probe},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, **probe},
        "securityContext": container_security(),
        "volumeMounts": mounts,
    }
    if spec.get("resources"):
        container["resources"] = spec["resources"]
    # A ReadWriteOnce claim cannot be attached to the old and the new pod at once.
    single_writer = i.uses_sqlite or i.uses_local_storage
    strategy: dict[str, Any] = (
        {"type": "Recreate"}
        if single_writer
        else {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(i, i.api_name, COMPONENT),
        "spec": {
            "replicas": spec.get("replicas", 1),
            "selector": {"matchLabels": selector(i, COMPONENT)},
            "strategy": strategy,
            "template": {
                "metadata": {
                    "labels": selector(i, COMPONENT),
                    # A settings change rolls the pods: they read the ConfigMap only at start.
                    "annotations": {"putplace.io/config-checksum": checksum(settings(i))},
                },
                "spec": {
                    "serviceAccountName": i.api_name,
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(),
                    "containers": [container],
                    "volumes": volumes,
                    **_spread(i),
                },
            },
        },
    }


def _spread(i: Instance) -> dict[str, Any]:
    """Replicas on different nodes where the scheduler can, so one node's loss is not an outage.

    Soft (ScheduleAnyway): a cluster with fewer schedulable nodes than replicas still runs them
    all. ``pod-template-hash`` keeps a rolling update's new pods from counting the old ones.
    """
    if i.spec.get("replicas", 1) <= 1:
        return {}
    return {
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector(i, COMPONENT)},
                "matchLabelKeys": ["pod-template-hash"],
            }
        ]
    }


def service(i: Instance) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(i, i.api_name, COMPONENT),
        "spec": {
            "selector": selector(i, COMPONENT),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def pod_disruption_budget(i: Instance) -> Manifest | None:
    if i.spec.get("replicas", 1) <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(i, i.api_name, COMPONENT),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(i, COMPONENT)}},
    }


def metrics_key(i: Instance) -> Manifest:
    """A metrics-only ApiKey: Prometheus sends it as a bearer token."""
    return {
        "apiVersion": "putplace.io/v1alpha1",
        "kind": "ApiKey",
        "metadata": metadata(i, f"{i.name}-metrics", COMPONENT),
        "spec": {
            "instanceRef": {"name": i.name},
            "scopes": ["metrics"],
            "secretName": f"{i.name}-metrics-key",
            "description": "Prometheus scraping of the API (created by the operator)",
        },
    }


def service_monitor(i: Instance) -> Manifest:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata(i, i.api_name, COMPONENT),
        "spec": {
            "selector": {"matchLabels": selector(i, COMPONENT)},
            "endpoints": [
                {
                    "port": "http",
                    "path": "/metrics",
                    "bearerTokenSecret": {"name": f"{i.name}-metrics-key", "key": KEY_FIELD},
                }
            ],
        },
    }
