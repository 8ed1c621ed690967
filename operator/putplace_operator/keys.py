"""ApiKey reconciliation: exactly one live key per ApiKey at its instance's API, in a Secret.

Called by the kopf handlers (``handlers.py``); talks to Kubernetes through ``Kube`` and to the
instance's API through the shared protocol client, authenticated with the instance's admin key.

Convergence after a crash anywhere: the operator finds its keys at the API by name (they begin
with the ApiKey's uid) and keeps only the one the Secret records as current, plus a rotated-out
one during its grace period; any other live key of this ApiKey is an orphan of an interrupted
reconcile and is revoked. A key is made anew when the Secret does not hold a working one (gone,
edited by hand, or revoked at the API), when ``spec.rotation`` grows (the old key then keeps
working for the grace period), or when what the key is made with changes (scopes, rate limit,
expiry, description, hosts, path prefixes, quota: keys are immutable at the API, and the old key
is revoked at once, since the change may take a permission away).

Deletion: a deleted ApiKey's keys are revoked (``revoke_all``); a deleted instance's keys, all
of them at once, while its API still runs (``revoke_instance``: an instance's finalizer holds
its children, the API's Deployment included, until it is done); an ApiKey of an instance being
deleted gets no new key.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from putplace_client import PutPlaceClient
from putplace_client.errors import NotFoundError, PutPlaceClientError, StatusError
from putplace_client.models import ApiKeyInfo
from putplace_operator.kube import Kube, KubeError
from putplace_operator.manifests import Instance
from putplace_operator.manifests.api import KEY_FIELD
from putplace_operator.manifests.apikey import ApiKeyObject, KeyRecord, controlled_by, key_secret, made_for
from putplace_operator.manifests.common import GROUP, VERSION, InstanceChild
from putplace_operator.settings import OperatorSettings

__all__ = ["REASONS", "Issued", "NotReady", "at_live_instance", "reconcile_key", "revoke_all", "revoke_instance"]

log = logging.getLogger(__name__)


# Why a key may not be ready (NotReady.reason): what alerts and dashboards can expect.
REASONS = (
    "AdminKeyMissing",
    "AdminKeyRejected",
    "ApiUnreachable",
    "InstanceNotFound",
    "KeyRejected",
    "KubernetesError",
    "SecretConflict",
)


class NotReady(Exception):
    """The key cannot be made ready now. ``permanent``: retrying without a spec change is useless."""

    def __init__(self, reason: str, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.reason, self.message, self.permanent = reason, message, permanent


@dataclass(frozen=True)
class Issued:
    """What a reconcile leaves: the current key (by id) and the rotated-out one, if any."""

    record: KeyRecord
    secret_name: str


@dataclass(frozen=True)
class _Target:
    instance: Instance
    deleting: bool  # the instance is being deleted (and its API with it)
    url: str  # where the operator reaches the API
    admin_key: str
    admin_key_generated: bool  # its Secret is the operator's (owned by the instance, deleted with it)


async def _target(k: InstanceChild, kube: Kube, settings: OperatorSettings) -> _Target:
    body = await kube.get(f"{GROUP}/{VERSION}", "PutPlaceInstance", k.instance, k.namespace)
    if body is None:
        raise NotReady("InstanceNotFound", f"PutPlaceInstance {k.instance} does not exist in {k.namespace}")
    return await _instance_target(body, kube, settings)


async def _instance_target(body: Mapping[str, Any], kube: Kube, settings: OperatorSettings) -> _Target:
    instance = Instance.from_body(body)
    secret = await kube.get("v1", "Secret", instance.admin_secret, instance.namespace)
    try:
        admin_key = base64.b64decode((secret or {})["data"][KEY_FIELD]).decode()
    except (KeyError, TypeError, ValueError):
        raise NotReady(
            "AdminKeyMissing", f"Secret {instance.admin_secret} has no {KEY_FIELD} (the instance is not set up yet)"
        ) from None
    url = instance.service_url
    if settings.api_url_template:
        url = settings.api_url_template.format(
            name=instance.name, namespace=instance.namespace, service=instance.api_name
        )
    owned = secret is not None and controlled_by(secret, instance.uid)
    return _Target(instance, bool(body["metadata"].get("deletionTimestamp")), url, admin_key, owned)


def _client(target: _Target, settings: OperatorSettings) -> PutPlaceClient:
    return PutPlaceClient(
        target.url, target.admin_key, timeout=settings.api_timeout_seconds, ca_bundle=settings.api_ca_bundle
    )


def _api_error(exc: PutPlaceClientError, url: str, refused: tuple[str, str] = ("KeyRejected", "the key")) -> NotReady:
    """A client error as a reason a user can act on (``refused``: the reason and the object's name
    when the API refuses what the spec asks for)."""
    if isinstance(exc, StatusError) and exc.status_code in (401, 403):
        return NotReady("AdminKeyRejected", f"the API at {url} refused the instance's admin key: {exc.detail}")
    if isinstance(exc, StatusError) and 400 <= exc.status_code < 500 and exc.status_code != 429:
        return NotReady(refused[0], f"the API at {url} refused {refused[1]}: {exc.detail}", permanent=True)
    return NotReady("ApiUnreachable", f"cannot reach the API at {url}: {exc}")


async def _revoke(api: PutPlaceClient, key_id: str) -> None:
    try:
        await api.revoke_key(key_id)
    except NotFoundError:
        pass  # already gone: what we wanted


async def _mine(api: PutPlaceClient, k: ApiKeyObject) -> dict[str, ApiKeyInfo]:
    return {info.id: info for info in await api.list_keys() if k.owns(info.name) and info.is_active}


def _works(found: tuple[KeyRecord, str] | None, live: dict[str, ApiKeyInfo]) -> bool:
    """Whether the Secret holds a key the API still takes (the prefix check catches a hand edit)."""
    if found is None:
        return False
    record, key = found
    info = live.get(record.key_id)
    return info is not None and key.startswith(info.key_prefix)


def _expires(k: ApiKeyObject) -> datetime | None:
    value = k.spec.get("expiresAt")
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None


async def reconcile_key(k: ApiKeyObject, kube: Kube, settings: OperatorSettings, now: datetime | None = None) -> Issued:
    """Make the ApiKey's Secret hold a working key as the spec asks; revoke what is due. Idempotent."""
    try:
        return await _reconcile(k, kube, settings, now or datetime.now(UTC))
    except KubeError as exc:
        raise NotReady("KubernetesError", f"the Kubernetes API said: {exc}") from None


async def _reconcile(k: ApiKeyObject, kube: Kube, settings: OperatorSettings, now: datetime) -> Issued:
    target = await _target(k, kube, settings)
    if target.deleting:  # its keys are being revoked (revoke_instance): no new one
        raise NotReady("InstanceNotFound", f"PutPlaceInstance {k.instance} is being deleted in {k.namespace}")
    secret = await kube.get("v1", "Secret", k.secret_name, k.namespace)
    if secret is not None and not controlled_by(secret, k.uid):
        raise NotReady(
            "SecretConflict",
            f"Secret {k.secret_name} exists and does not belong to this ApiKey; choose another spec.secretName",
            permanent=True,
        )
    found = KeyRecord.from_secret(secret)
    try:
        async with _client(target, settings) as api:
            live = await _mine(api, k)
            working = found if _works(found, live) else None
            issued = working is None or working[0].rotation != k.rotation or working[0].checksum != k.checksum
            if issued:
                working = await _issue(api, k, kube, target, working, settings, now)  # writes the Secret
            assert working is not None
            record, key = working
            if record.previous_key_id and record.revoke_after and record.revoke_after <= now:
                await _revoke(api, record.previous_key_id)
                record = replace(record, previous_key_id=None, revoke_after=None)
                issued = False  # the Secret must lose the previous key's annotations
            if not issued:
                # Re-applied on every pass: puts back a Secret edited by hand (labels, URL, annotations).
                await kube.apply(key_secret(k, key, target.instance.service_url, record))
            for orphan in set(live) - {record.key_id, record.previous_key_id}:
                log.info("revoking key %s of ApiKey %s/%s: no longer current", orphan, k.namespace, k.name)
                await _revoke(api, orphan)
    except PutPlaceClientError as exc:
        raise _api_error(exc, target.url) from None
    except ValidationError as exc:  # what the CRD's schema cannot say (e.g. a prefix's length in bytes)
        first = exc.errors()[0]
        raise NotReady(
            "KeyRejected",
            f"the spec makes no valid key: {'.'.join(map(str, first['loc']))}: {first['msg']}",
            permanent=True,
        ) from None
    return Issued(record, k.secret_name)


async def _issue(
    api: PutPlaceClient,
    k: ApiKeyObject,
    kube: Kube,
    target: _Target,
    working: tuple[KeyRecord, str] | None,
    settings: OperatorSettings,
    now: datetime,
) -> tuple[KeyRecord, str]:
    """A new key at the API, recorded in the Secret at once (before anything can interrupt us)."""
    rate: dict[str, Any] = k.spec.get("rateLimit") or {}
    quota: dict[str, Any] = k.spec.get("quota") or {}
    created = await api.create_key(
        k.api_name,
        k.scopes,
        description=k.spec.get("description"),
        rate_limit=rate.get("requestsPerSecond"),
        rate_limit_burst=rate.get("burst"),
        expires_at=_expires(k),
        hostnames=k.spec.get("hostnames"),
        path_prefixes=k.spec.get("pathPrefixes"),
        max_bytes=quota.get("maxBytes"),
        max_files=quota.get("maxFiles"),
    )
    previous, revoke_after = None, None
    if working is not None:
        old = working[0]
        rotated_only = k.rotation > old.rotation and k.checksum == old.checksum
        if rotated_only and settings.rotation_grace_seconds > 0:
            previous, revoke_after = old.key_id, now + timedelta(seconds=settings.rotation_grace_seconds)
        # else: the old key is an orphan from now on and is revoked below
    record = KeyRecord(created.id, k.rotation, k.checksum, previous, revoke_after)
    await kube.apply(key_secret(k, created.api_key, target.instance.service_url, record))
    log.info("issued key %s for ApiKey %s/%s (rotation %d)", created.id, k.namespace, k.name, k.rotation)
    return record, created.api_key


async def at_live_instance(
    k: InstanceChild,
    kube: Kube,
    settings: OperatorSettings,
    work: Callable[[PutPlaceClient], Awaitable[None]],
    api_error: Callable[[PutPlaceClientError, str], NotReady] = _api_error,
) -> bool:
    """Run ``work`` against the API of a deleted object's instance. False: nothing to do it at
    (the instance is gone, or being deleted: its own deletion handler does it for all)."""
    try:
        target = await _target(k, kube, settings)
    except NotReady:
        return False
    except KubeError as exc:
        raise NotReady("KubernetesError", f"the Kubernetes API said: {exc}") from None
    if target.deleting:
        return False
    try:
        async with _client(target, settings) as api:
            await work(api)
    except PutPlaceClientError as exc:
        raise api_error(exc, target.url) from None
    return True


async def revoke_all(k: ApiKeyObject, kube: Kube, settings: OperatorSettings) -> bool:
    """Revoke every key of a deleted ApiKey. False: nothing to revoke at (the instance is gone)."""

    async def revoke(api: PutPlaceClient) -> None:
        for key_id in await _mine(api, k):
            await _revoke(api, key_id)

    return await at_live_instance(k, kube, settings, revoke)


async def revoke_instance(body: Mapping[str, Any], kube: Kube, settings: OperatorSettings) -> int | None:
    """Revoke, at a deleted instance's API, every key the operator made there for the ApiKeys of
    this instance (its agent's and Prometheus' keys, and the users'), the keys of ApiKeys of its
    namespace that are gone (orphans), and last its admin key if the operator generated it: so a
    database or volume that outlives the instance accepts none of them. Keys of ApiKeys of another
    instance sharing the database, keys made by hand, and an admin key given in a Secret of one's
    own (a re-created instance uses it again) are left alone.

    Returns how many keys were revoked; None: nothing to revoke at (the instance was never set up).
    Raises ``NotReady``: the API or Kubernetes did not answer (the caller retries, boundedly).
    """
    try:
        target = await _instance_target(body, kube, settings)
        objects = [ApiKeyObject.from_body(b) for b in await kube.list(f"{GROUP}/{VERSION}", "ApiKey")]
    except NotReady:
        return None  # no admin key: no key was ever made with it
    except KubeError as exc:
        raise NotReady("KubernetesError", f"the Kubernetes API said: {exc}") from None
    i = target.instance
    others = {k.uid for k in objects if k.namespace == i.namespace and k.instance != i.name}
    revoked = 0
    try:
        async with _client(target, settings) as api:
            admin_ids = []
            for info in await api.list_keys():
                if not info.is_active:
                    continue
                owner = made_for(info.name)
                if owner is not None and owner[1] == i.namespace and owner[0] not in others:
                    await _revoke(api, info.id)
                    revoked += 1
                elif owner is None and target.admin_key_generated and target.admin_key.startswith(info.key_prefix):
                    admin_ids.append(info.id)
            for key_id in admin_ids:  # last: the operator needs it until here
                await _revoke(api, key_id)
                revoked += 1
    except PutPlaceClientError as exc:
        raise _api_error(exc, target.url) from None
    return revoked
