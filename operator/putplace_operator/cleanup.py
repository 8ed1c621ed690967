"""``putplace-operator cleanup``: delete every PutPlaceInstance, ApiKey and WebhookSubscription in the watched
namespaces and wait, with a deadline, until they are gone.

Run by the chart's pre-delete hook Job while the operator still runs: its finalizers revoke the
keys and release the objects (``handlers.py``), and only then does ``helm uninstall`` remove the
operator and its permissions. Without it, an object deleted after the operator is stuck on its
finalizer. The operator's deletion handlers give up after a bounded number of retries, so the
wait ends; if the operator is not running, nothing releases the objects and the deadline says so.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from putplace_operator.kube import Kube, KubeError
from putplace_operator.manifests.common import GROUP, VERSION

__all__ = ["KINDS", "CleanupError", "cleanup"]

log = logging.getLogger(__name__)

KINDS = ("WebhookSubscription", "ApiKey", "PutPlaceInstance")  # keys and hooks first: each is then let go on its own


class CleanupError(Exception):
    """Cleanup did not finish; the message is one line for the Job's log and ``helm uninstall``."""


@dataclass(frozen=True)
class _Left:
    kind: str
    namespace: str
    name: str
    finalizers: tuple[str, ...]

    def __str__(self) -> str:
        held = f" (finalizers: {', '.join(self.finalizers)})" if self.finalizers else ""
        return f"{self.kind} {self.namespace}/{self.name}{held}"


def _watched(body: Mapping[str, Any], namespaces: list[str]) -> bool:
    namespace = body["metadata"]["namespace"]
    return not namespaces or any(fnmatch.fnmatchcase(namespace, p) for p in namespaces)


async def _remaining(kube: Kube, namespaces: list[str]) -> list[tuple[_Left, bool]]:
    """Every object of the operator's kinds left in the watched namespaces, and whether it is being deleted."""
    found = []
    for kind in KINDS:
        try:
            bodies = await kube.list(f"{GROUP}/{VERSION}", kind)
        except KubeError as exc:
            if exc.status == 404:  # the CRD is not installed: nothing of that kind
                continue
            raise
        for body in bodies:
            if _watched(body, namespaces):
                meta = body["metadata"]
                left = _Left(kind, meta["namespace"], meta["name"], tuple(meta.get("finalizers") or ()))
                found.append((left, bool(meta.get("deletionTimestamp"))))
    return found


async def cleanup(kube: Kube, namespaces: list[str], timeout: float, poll: float = 1.0) -> int:
    """Delete them all and wait until they are gone; return how many there were. Raises
    ``CleanupError`` at the deadline (naming what is left) or on a Kubernetes error."""
    where = ", ".join(namespaces) if namespaces else "all namespaces"
    deadline = time.monotonic() + timeout
    try:
        first = await _remaining(kube, namespaces)
        for left, deleting in first:
            if not deleting:
                await kube.delete(f"{GROUP}/{VERSION}", left.kind, left.name, left.namespace)
        log.info("cleanup: deleting %d PutPlace objects in %s", len(first), where)
        reported = len(first)
        while True:
            remaining = [left for left, _ in await _remaining(kube, namespaces)]
            if not remaining:
                log.info("cleanup: done, no PutPlaceInstance, ApiKey or WebhookSubscription left in %s", where)
                return len(first)
            if len(remaining) != reported:
                reported = len(remaining)
                log.info("cleanup: %d left: %s", reported, ", ".join(map(str, remaining[:10])))
            if time.monotonic() >= deadline:
                shown = ", ".join(map(str, remaining[:5])) + (" …" if len(remaining) > 5 else "")
                raise CleanupError(
                    f"{len(remaining)} objects still there after {timeout:g} s: {shown}; the operator's "
                    "finalizers release them: is the operator running? "
                    "(kubectl get pods -A -l app.kubernetes.io/component=operator)"
                )
            await asyncio.sleep(poll)
    except KubeError as exc:
        raise CleanupError(f"the Kubernetes API said: {exc}") from None
