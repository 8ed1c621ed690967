"""One reconcile of one object, as a status to write: called by the kopf change handlers
(``handlers.py``) and by the periodic pass (``resync.py``), which write it each their own way.

A per-object lock keeps the two from reconciling one object at once.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from putplace_operator import keys, metrics, webhooks
from putplace_operator.kube import Kube, KubeError
from putplace_operator.manifests import Instance, agent, api, children
from putplace_operator.manifests.apikey import ApiKeyObject
from putplace_operator.manifests.webhook import WebhookObject
from putplace_operator.settings import OperatorSettings
from putplace_operator.status import instance_status, key_status, webhook_status

__all__ = [
    "SETTINGS", "KeyResult", "delete_apikey", "delete_instance", "forget", "kube", "last_full", "progressing",
    "reconcile_apikey", "reconcile_instance", "reconcile_webhook", "delete_webhook",
]  # fmt: skip

log = logging.getLogger(__name__)

SETTINGS = OperatorSettings()
_kube: Kube | None = None
_locks: dict[str, asyncio.Lock] = {}
# When each object (by uid) was last fully reconciled (monotonic): the periodic pass skips
# objects a change handler has just done.
last_full: dict[str, float] = {}
metrics.declare("PutPlaceInstance", ["KubernetesError"])
metrics.declare("ApiKey", keys.REASONS)
metrics.declare("WebhookSubscription", webhooks.REASONS)


def kube() -> Kube:
    global _kube
    if _kube is None:
        _kube = Kube(served_ttl=SETTINGS.reconcile_seconds)
    return _kube


@asynccontextmanager
async def _exclusive(uid: str) -> AsyncIterator[None]:
    lock = _locks.setdefault(uid, asyncio.Lock())
    async with lock:
        yield


def forget(uid: str) -> None:
    """An object is gone: drop what the operator kept about it."""
    metrics.forget(uid)
    _locks.pop(uid, None)
    last_full.pop(uid, None)


def _conditions(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list((body.get("status") or {}).get("conditions") or [])


def progressing(body: Mapping[str, Any]) -> bool:
    """On its way to Ready: not Ready for the current spec, and not failed (a failure stands until
    the next full reconcile, which alone can tell whether it is over)."""
    status = body.get("status") or {}
    current = status.get("observedGeneration") == body["metadata"].get("generation")
    true = {c["type"] for c in status.get("conditions") or [] if c["status"] == "True"}
    return not (current and "Ready" in true) and "Degraded" not in true


# -- PutPlaceInstance --------------------------------------------------------------------------


async def _ensure_admin_secret(i: Instance) -> None:
    """Generated once; never replaced (a new key would lock out whoever holds the old one)."""
    if await kube().get("v1", "Secret", i.admin_secret, i.namespace) is None:
        await kube().create(api.admin_secret(i, "pp_" + secrets.token_urlsafe(32)))


async def _apply_children(i: Instance) -> None:
    await _ensure_admin_secret(i)
    for manifest in children(i):
        await kube().apply(manifest)
    if (i.spec.get("metrics") or {}).get("serviceMonitor"):
        # Only where the Prometheus operator's CRDs are served (they may arrive later).
        if await kube().served("monitoring.coreos.com/v1", "ServiceMonitor"):
            await kube().apply(api.service_monitor(i))
        if (i.spec.get("agent") or {}).get("enabled", True) and await kube().served(
            "monitoring.coreos.com/v1", "PodMonitor"
        ):
            await kube().apply(agent.pod_monitor(i))


async def reconcile_instance(body: Mapping[str, Any], *, apply: bool = True) -> dict[str, Any]:
    """Apply the children (unless ``apply`` is False: status only); the status they make."""
    i = Instance.from_body(body)
    async with _exclusive(i.uid):
        with metrics.reconciling("PutPlaceInstance") as outcome:
            error: str | None = None
            try:
                if apply:
                    await _apply_children(i)
                    last_full[i.uid] = time.monotonic()
            except KubeError as exc:  # reported in status; the next pass tries again, never a tight loop
                error = f"the Kubernetes API said: {exc}"[:500]
                outcome.reason = "KubernetesError"
                log.warning("reconciling %s/%s failed: %s", i.namespace, i.name, error)
            try:
                deployment = await kube().get("apps/v1", "Deployment", i.api_name, i.namespace)
                daemon_set = await kube().get("apps/v1", "DaemonSet", i.agent_name, i.namespace)
            except KubeError as exc:
                deployment = daemon_set = None
                error = error or f"the Kubernetes API said: {exc}"[:500]
            status = instance_status(
                generation=body["metadata"].get("generation", 0),
                endpoint=i.service_url,
                deployment=deployment,
                daemon_set=daemon_set,
                agents_enabled=bool((i.spec.get("agent") or {}).get("enabled", True)),
                error=error,
                previous=_conditions(body),
            )
            metrics.set_ready("PutPlaceInstance", i.uid, status["conditions"][0]["status"] == "True")
            return status


async def delete_instance(body: Mapping[str, Any]) -> int | None:
    """Revoke a deleted instance's keys at its API (see ``keys.revoke_instance``); raises ``keys.NotReady``."""
    uid = body["metadata"]["uid"]
    forget(uid)
    async with _exclusive(uid):
        await webhooks.delete_instance_subscriptions(body, kube(), SETTINGS)  # needs the admin key: first
        return await keys.revoke_instance(body, kube(), SETTINGS)


# -- ApiKey ------------------------------------------------------------------------------------

KeyResult = tuple[dict[str, Any], keys.NotReady | None]


async def _made_at_api(
    kind: str,
    uid: str,
    body: Mapping[str, Any],
    attempt: Callable[[int, list[dict[str, Any]]], Awaitable[dict[str, Any]]],
    not_ready: Callable[..., dict[str, Any]],
) -> KeyResult:
    """One attempt at an object made at an instance's API (an ApiKey, a WebhookSubscription): the
    status ``attempt`` returns, or the one ``not_ready`` makes of why it failed (and that reason)."""
    generation = body["metadata"].get("generation", 0)
    previous = _conditions(body)
    async with _exclusive(uid):
        with metrics.reconciling(kind) as outcome:
            last_full[uid] = time.monotonic()
            try:
                status = await attempt(generation, previous)
            except keys.NotReady as exc:
                outcome.reason = exc.reason
                why = (exc.reason, exc.message)
                metrics.set_ready(kind, uid, False)
                failed, waiting = (why, None) if exc.permanent else (None, why)
                return not_ready(generation=generation, previous=previous, failed=failed, waiting=waiting), exc
            metrics.set_ready(kind, uid, True)
            return status, None


async def reconcile_apikey(body: Mapping[str, Any]) -> KeyResult:
    """One attempt: the status to write, and why the key is not ready (None: it is)."""
    k = ApiKeyObject.from_body(body)

    async def attempt(generation: int, previous: list[dict[str, Any]]) -> dict[str, Any]:
        record = (done := await keys.reconcile_key(k, kube(), SETTINGS)).record
        return key_status(
            generation=generation,
            previous=previous,
            key_id=record.key_id,
            secret_name=done.secret_name,
            rotation=record.rotation,
            previous_key_id=record.previous_key_id,
            revoke_after=record.revoke_after.strftime("%Y-%m-%dT%H:%M:%SZ") if record.revoke_after else None,
        )

    return await _made_at_api("ApiKey", k.uid, body, attempt, key_status)


async def delete_apikey(body: Mapping[str, Any]) -> bool:
    """Revoke a deleted ApiKey's keys (see ``keys.revoke_all``); raises ``keys.NotReady``."""
    k = ApiKeyObject.from_body(body)
    forget(k.uid)
    async with _exclusive(k.uid):
        return await keys.revoke_all(k, kube(), SETTINGS)


# -- WebhookSubscription -----------------------------------------------------------------------


async def reconcile_webhook(body: Mapping[str, Any]) -> KeyResult:
    """One attempt: the status to write, and why the subscription is not ready (None: it is)."""
    w = WebhookObject.from_body(body)

    async def attempt(generation: int, previous: list[dict[str, Any]]) -> dict[str, Any]:
        done = await webhooks.reconcile_subscription(w, kube(), SETTINGS)
        return webhook_status(
            generation=generation,
            previous=previous,
            subscription_id=done.subscription_id,
            secret_name=done.secret_name,
        )

    return await _made_at_api("WebhookSubscription", w.uid, body, attempt, webhook_status)


async def delete_webhook(body: Mapping[str, Any]) -> bool:
    """Delete a deleted WebhookSubscription's subscriptions at the API; raises ``keys.NotReady``."""
    w = WebhookObject.from_body(body)
    forget(w.uid)
    async with _exclusive(w.uid):
        return await webhooks.delete_subscriptions(w, kube(), SETTINGS)
