"""The conditions of PutPlaceInstance and ApiKey objects, in one place: Ready, Progressing, Degraded."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

__all__ = ["instance_status", "key_status", "webhook_status"]


def _condition(kind: str, status: bool, reason: str, message: str, generation: int) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _keep_transition_times(new: list[dict[str, Any]], old: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A condition's lastTransitionTime moves only when its status does."""
    before = {c.get("type"): c for c in old}
    for c in new:
        prior = before.get(c["type"])
        if prior is not None and prior.get("status") == c["status"] and prior.get("lastTransitionTime"):
            c["lastTransitionTime"] = prior["lastTransitionTime"]
    return new


def _observed(child: dict[str, Any] | None) -> bool:
    """Whether the child's controller has looked at its current spec (else its status is stale or empty)."""
    if child is None:
        return False
    seen = (child.get("status") or {}).get("observedGeneration")
    return seen is not None and seen >= (child.get("metadata") or {}).get("generation", 0)


def instance_status(
    *,
    generation: int,
    endpoint: str,
    deployment: dict[str, Any] | None,
    daemon_set: dict[str, Any] | None,
    agents_enabled: bool,
    error: str | None,
    previous: list[dict[str, Any]],
) -> dict[str, Any]:
    """Status from what the children report (``None`` = not there yet)."""
    dep = (deployment or {}).get("status") or {}
    want = ((deployment or {}).get("spec") or {}).get("replicas", 0)
    ready = dep.get("readyReplicas") or 0
    ds = (daemon_set or {}).get("status") or {}
    agents_desired = ds.get("desiredNumberScheduled") or 0
    agents_ready = ds.get("numberReady") or 0
    api_ready = _observed(deployment) and want > 0 and ready >= want
    agents_ok = not agents_enabled or (_observed(daemon_set) and agents_ready >= agents_desired)
    is_ready = api_ready and agents_ok and error is None
    if error is not None:
        reason, message = "ReconcileFailed", error
    elif is_ready:
        reason, message = "Available", f"{ready}/{want} API replicas and {agents_ready}/{agents_desired} agents ready"
    else:
        reason = "Progressing"
        message = f"{ready}/{want} API replicas and {agents_ready}/{agents_desired} agents ready"
    return {
        "observedGeneration": generation,
        "endpoint": endpoint,
        "readyReplicas": ready,
        "agentsReady": agents_ready,
        "agentsDesired": agents_desired,
        "conditions": _conditions(
            ready=is_ready, degraded=error is not None, reason=reason, message=message,
            generation=generation, previous=previous,
        ),
    }  # fmt: skip


def _conditions(
    *, ready: bool, degraded: bool, reason: str, message: str, generation: int, previous: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Ready, Progressing (neither ready nor failed: still on its way) and Degraded."""
    conditions = [
        _condition("Ready", ready, reason, message, generation),
        _condition("Progressing", not ready and not degraded, reason, message, generation),
        _condition("Degraded", degraded, reason if degraded else "AsExpected", message, generation),
    ]
    return _keep_transition_times(conditions, previous)


def _attempt_status(
    generation: int,
    previous: list[dict[str, Any]],
    done: tuple[str, str],
    waiting: tuple[str, str] | None,
    failed: tuple[str, str] | None,
) -> dict[str, Any]:
    """The conditions after one attempt at an object made at the API: ready with ``done`` (reason,
    message), or ``waiting`` to retry, or ``failed`` for good (Degraded)."""
    reason, message = failed or waiting or done
    return {
        "observedGeneration": generation,
        "conditions": _conditions(
            ready=failed is None and waiting is None, degraded=failed is not None, reason=reason, message=message,
            generation=generation, previous=previous,
        ),
    }  # fmt: skip


def key_status(
    *,
    generation: int,
    previous: list[dict[str, Any]],
    key_id: str | None = None,
    secret_name: str | None = None,
    rotation: int | None = None,
    previous_key_id: str | None = None,
    revoke_after: str | None = None,
    waiting: tuple[str, str] | None = None,
    failed: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """An ApiKey's status: ready with its key, ``waiting`` (reason, message) to retry, or ``failed``."""
    done = ("KeyIssued", f"key {key_id} is in Secret {secret_name}")
    status = _attempt_status(generation, previous, done, waiting, failed)
    if key_id is not None:
        # None values remove the fields in kopf's merge patch (no previous key any more).
        status |= {
            "keyId": key_id,
            "secretName": secret_name,
            "rotation": rotation,
            "previousKeyId": previous_key_id,
            "revokeAfter": revoke_after,
        }
    return status


def webhook_status(
    *,
    generation: int,
    previous: list[dict[str, Any]],
    subscription_id: str | None = None,
    secret_name: str | None = None,
    waiting: tuple[str, str] | None = None,
    failed: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """A WebhookSubscription's status: ready with its subscription, ``waiting`` to retry, or ``failed``."""
    done = ("Subscribed", f"subscription {subscription_id}; its signing secret is in Secret {secret_name}")
    status = _attempt_status(generation, previous, done, waiting, failed)
    if subscription_id is not None:
        status |= {"subscriptionId": subscription_id, "secretName": secret_name}
    return status
