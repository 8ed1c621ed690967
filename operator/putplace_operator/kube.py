"""Talking to Kubernetes: server-side apply of child manifests, reads, and API discovery.

The official client's DynamicClient, used from threads (kopf handlers are async). One field
manager, so re-applying the same manifests is a no-op and a hand edit of a field we own is put
back -- that is how drift is repaired. The client's exceptions are translated here, at one
boundary, into ``KubeError`` (status and the API server's message, without a traceback), so
callers report them in status instead of crashing a handler.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError, NotFoundError, ResourceNotFoundError

from putplace_operator.manifests import Manifest

__all__ = ["FIELD_MANAGER", "Kube", "KubeError"]

FIELD_MANAGER = "putplace-operator"
P = ParamSpec("P")
T = TypeVar("T")


class KubeError(Exception):
    """The Kubernetes API refused or failed a request; ``status`` is its HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    try:
        return str(json.loads(body)["message"])  # type: ignore[arg-type]  # TypeError caught below
    except (TypeError, ValueError, KeyError):
        return str(getattr(exc, "summary", lambda: None)() or exc).splitlines()[0]


def _translated(call: Callable[P, T]) -> Callable[P, T]:
    @functools.wraps(call)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return call(*args, **kwargs)
        except (DynamicApiError, ApiException) as exc:
            raise KubeError(int(getattr(exc, "status", 0) or 0), _message(exc)) from None
        except ResourceNotFoundError as exc:  # a kind the cluster does not serve (a CRD removed)
            raise KubeError(404, str(exc)) from None
        except (OSError, urllib3.exceptions.HTTPError) as exc:  # refused, TLS, timeouts
            raise KubeError(0, f"Kubernetes API unreachable: {exc}") from None

    return wrapper


@_translated
def _connect() -> DynamicClient:
    return DynamicClient(client.ApiClient())  # reads the server's version: a first request


class Kube:
    def __init__(self, served_ttl: float = 60.0) -> None:
        """``served_ttl``: how long an answer of ``served()`` stands. A kind installed later (the
        Prometheus operator's ServiceMonitor) is noticed within that time, without a full
        discovery at every reconcile."""
        self._served_ttl = served_ttl
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # read now, not at import
        self._dynamic = _connect()
        # The client's discovery cache is not thread-safe: every lookup and refresh goes
        # through this lock, and resolved kinds are kept here.
        self._discovery = threading.Lock()
        self._resources: dict[tuple[str, str], Any] = {}
        self._served: dict[tuple[str, str], tuple[bool, float]] = {}

    def _resource(self, api_version: str, kind: str) -> Any:
        with self._discovery:
            found = self._resources.get((api_version, kind))
            if found is None:
                found = self._resources[(api_version, kind)] = self._dynamic.resources.get(
                    api_version=api_version, kind=kind
                )
            return found

    @_translated
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

    @_translated
    def _get(self, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        try:
            return dict(self._resource(api_version, kind).get(name=name, namespace=namespace).to_dict())
        except NotFoundError:
            return None

    async def get(self, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._get, api_version, kind, name, namespace)

    @_translated
    def _list(self, api_version: str, kind: str) -> list[dict[str, Any]]:
        return [dict(item) for item in self._resource(api_version, kind).get().to_dict().get("items", [])]

    async def list(self, api_version: str, kind: str) -> list[dict[str, Any]]:
        """Every object of a kind, in all namespaces."""
        return await asyncio.to_thread(self._list, api_version, kind)

    @_translated
    def _patch_status(self, api_version: str, kind: str, name: str, namespace: str, status: dict[str, Any]) -> None:
        self._resource(api_version, kind).status.patch(
            body={"status": status}, name=name, namespace=namespace, content_type="application/merge-patch+json"
        )

    async def patch_status(
        self, api_version: str, kind: str, name: str, namespace: str, status: dict[str, Any]
    ) -> None:
        """Merge ``status`` into an object's status subresource (None values remove fields)."""
        await asyncio.to_thread(self._patch_status, api_version, kind, name, namespace, status)

    @_translated
    def _create(self, manifest: Manifest) -> None:
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        resource.create(body=manifest, namespace=manifest["metadata"].get("namespace"))

    async def create(self, manifest: Manifest) -> None:
        await asyncio.to_thread(self._create, manifest)

    @_translated
    def _delete(self, api_version: str, kind: str, name: str, namespace: str) -> None:
        try:
            self._resource(api_version, kind).delete(name=name, namespace=namespace)
        except NotFoundError:
            pass  # gone already: what we wanted

    async def delete(self, api_version: str, kind: str, name: str, namespace: str) -> None:
        """Delete an object (the garbage collector deletes its dependents once it is gone)."""
        await asyncio.to_thread(self._delete, api_version, kind, name, namespace)

    @_translated
    def _is_served(self, api_version: str, kind: str) -> bool:
        known = self._served.get((api_version, kind))
        if known is not None and time.monotonic() - known[1] < self._served_ttl:
            return known[0]
        with self._discovery:
            self._dynamic.resources.invalidate_cache()
            self._resources.clear()
        try:
            self._resource(api_version, kind)
            answer = True
        except ResourceNotFoundError:
            answer = False
        self._served[(api_version, kind)] = (answer, time.monotonic())
        return answer

    async def served(self, api_version: str, kind: str) -> bool:
        """Whether the cluster serves this kind now (e.g. ServiceMonitor, once the Prometheus operator is in)."""
        return await asyncio.to_thread(self._is_served, api_version, kind)
