"""Talking to Kubernetes: server-side apply of child manifests, reads, and API discovery.

The official client's DynamicClient, used from threads (kopf handlers are async). One field
manager, so re-applying the same manifests is a no-op and a hand edit of a field we own is put
back -- that is how drift is repaired.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from kubernetes import client, config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

from putplace_operator.manifests import Manifest

__all__ = ["FIELD_MANAGER", "Kube"]

FIELD_MANAGER = "putplace-operator"


class Kube:
    def __init__(self) -> None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # read now, not at import
        self._dynamic = DynamicClient(client.ApiClient())

    def _resource(self, api_version: str, kind: str) -> Any:
        return self._dynamic.resources.get(api_version=api_version, kind=kind)

    def _apply(self, manifest: Manifest) -> dict[str, Any]:
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        meta = manifest["metadata"]
        result = resource.server_side_apply(
            body=manifest,
            name=meta["name"],
            namespace=meta.get("namespace"),
            field_manager=FIELD_MANAGER,
            force_conflicts=True,  # the operator owns these fields; a hand edit is drift
        )
        return dict(result.to_dict())

    async def apply(self, manifest: Manifest) -> dict[str, Any]:
        return await asyncio.to_thread(self._apply, manifest)

    def _get(self, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        try:
            return dict(self._resource(api_version, kind).get(name=name, namespace=namespace).to_dict())
        except NotFoundError:
            return None

    async def get(self, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._get, api_version, kind, name, namespace)

    def _create(self, manifest: Manifest) -> None:
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        resource.create(body=manifest, namespace=manifest["metadata"].get("namespace"))

    async def create(self, manifest: Manifest) -> None:
        await asyncio.to_thread(self._create, manifest)

    def _served(self, api_version: str, kind: str) -> bool:
        try:
            self._dynamic.resources.invalidate_cache()
            self._resource(api_version, kind)
            return True
        except ResourceNotFoundError:
            return False

    async def served(self, api_version: str, kind: str) -> bool:
        """Whether the cluster serves this kind now (e.g. ServiceMonitor, once the Prometheus operator is in)."""
        return await asyncio.to_thread(self._served, api_version, kind)
