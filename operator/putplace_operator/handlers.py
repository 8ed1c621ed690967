"""kopf handlers, and nothing else: each reads the object, calls ``reconcile.py`` and writes what
it returns. Manifests are built in ``manifests/``, keys handled in ``keys.py``, conditions
computed in ``status.py``, Kubernetes reached through ``kube.py``.

Each object is reconciled on create, update and resume here, and again periodically by the
pass of ``resync.py`` (drift repair, rotated-out keys revoked after their grace period, status
of an instance on its way to Ready), which runs beside kopf from startup to cleanup. No kopf
timers: they would put a finalizer on every object. The finalizers are the deletion handlers':
a deleted instance has every key made at its API for it revoked (agent, metrics, users' keys,
and its generated admin key) while its API still runs; a deleted ApiKey a user made has its key
revoked (one the operator made for an instance goes with the instance). Both are released after
``delete_retries`` failed attempts, with an error logged, so nothing stays stuck.

Retries never storm: a failing change handler is retried with exponential backoff (capped), a
permanent error (e.g. a Secret name taken by someone else) is not retried until the spec
changes, and the periodic pass tries again once per ``reconcile_seconds``, reported in status.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from putplace_operator import keys, reconcile
from putplace_operator.manifests.common import GROUP, VERSION
from putplace_operator.reconcile import SETTINGS
from putplace_operator.resync import resync_forever

log = logging.getLogger(__name__)

INSTANCES, KEYS, HOOKS = "putplaceinstances", "apikeys", "webhooksubscriptions"
_resync: tuple[asyncio.Task[None], asyncio.Event] | None = None


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _resync
    # A watch that silently stops delivering events is kopf's best-known failure: bound them.
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.watching.connect_timeout = 10
    settings.persistence.finalizer = "putplace.io/operator"
    settings.posting.level = logging.WARNING
    stop = asyncio.Event()
    _resync = asyncio.create_task(resync_forever(SETTINGS.namespaces, stop)), stop


@kopf.on.cleanup()
async def shutdown(**_: Any) -> None:
    if _resync is not None:
        task, stop = _resync
        stop.set()
        await asyncio.wait([task], timeout=10)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # kopf's own readers: KUBECONFIG is read when called (the client library reads it at import).
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


# -- PutPlaceInstance --------------------------------------------------------------------------


@kopf.on.create(GROUP, VERSION, INSTANCES)
@kopf.on.update(GROUP, VERSION, INSTANCES, field="spec")
@kopf.on.resume(GROUP, VERSION, INSTANCES)
async def instance_changed(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    patch.status.update(await reconcile.reconcile_instance(body))


@kopf.on.delete(GROUP, VERSION, INSTANCES)
async def instance_deleted(body: kopf.Body, retry: int, **_: Any) -> None:
    """Revoke the keys made at the instance's API while it still runs, then let the instance go
    (its children with it); never keep it stuck."""
    meta = body["metadata"]
    try:
        revoked = await reconcile.delete_instance(body)
    except keys.NotReady as exc:
        # A refused admin key will not be taken on a retry (e.g. revoked by an earlier attempt).
        _retry_unless_given_up(exc, retry, hopeless=exc.reason == "AdminKeyRejected")
        log.error(
            "PutPlaceInstance %s/%s deleted, but its keys could not be revoked after %d attempts (%s); "
            "releasing it: a database or volume it leaves behind still accepts them",
            meta["namespace"], meta["name"], retry + 1, exc.message,
        )  # fmt: skip
        return
    if revoked is None:
        log.info(
            "PutPlaceInstance %s/%s released: it has no admin key, so no key was made", meta["namespace"], meta["name"]
        )
    else:
        log.info(
            "PutPlaceInstance %s/%s released: %d keys revoked at its API", meta["namespace"], meta["name"], revoked
        )


# -- ApiKey ------------------------------------------------------------------------------------


@kopf.on.create(GROUP, VERSION, KEYS)
@kopf.on.update(GROUP, VERSION, KEYS, field="spec")
@kopf.on.resume(GROUP, VERSION, KEYS)
async def apikey_changed(body: kopf.Body, patch: kopf.Patch, retry: int, **_: Any) -> None:
    status, problem = await reconcile.reconcile_apikey(body)
    patch.status.update(status)
    _retry_unless_done(problem, retry)


def _retry_unless_given_up(exc: keys.NotReady, retry: int, *, hopeless: bool = False) -> None:
    """A deletion is retried with backoff (raises) up to ``delete_retries``, then given up
    (returns): the caller logs what is left behind and lets the object go, never stuck."""
    if hopeless or retry >= SETTINGS.delete_retries:
        return
    raise kopf.TemporaryError(f"{exc.reason}: {exc.message}", delay=SETTINGS.backoff(retry)) from None


def _retry_unless_done(problem: keys.NotReady | None, retry: int) -> None:
    """A permanent problem waits for a spec change; any other is retried with backoff."""
    if problem is None:
        return
    if problem.permanent:
        raise kopf.PermanentError(f"{problem.reason}: {problem.message}")
    raise kopf.TemporaryError(f"{problem.reason}: {problem.message}", delay=SETTINGS.backoff(retry))


def _made_by_a_user(body: kopf.Body, **_: Any) -> bool:
    """Not one the operator made for an instance (the instance's deletion handler revokes those)."""
    owners = body["metadata"].get("ownerReferences") or []
    return not any(ref.get("kind") == "PutPlaceInstance" and ref.get("controller") for ref in owners)


@kopf.on.delete(GROUP, VERSION, KEYS, when=_made_by_a_user)
async def apikey_deleted(body: kopf.Body, retry: int, **_: Any) -> None:
    """Revoke the keys at the API, then let the object go; never keep it stuck."""
    meta = body["metadata"]
    try:
        revoked = await reconcile.delete_apikey(body)
    except keys.NotReady as exc:
        _retry_unless_given_up(exc, retry)
        log.error(
            "ApiKey %s/%s deleted, but its keys could not be revoked after %d attempts (%s); releasing it: "
            "revoke the keys named '%s …' with PUT /api_keys/{id}/revoke",
            meta["namespace"], meta["name"], retry + 1, exc.message, meta["uid"],
        )  # fmt: skip
        return
    if not revoked:
        log.info("ApiKey %s/%s released: its instance is gone, and its keys with it", meta["namespace"], meta["name"])


# -- WebhookSubscription -----------------------------------------------------------------------


@kopf.on.create(GROUP, VERSION, HOOKS)
@kopf.on.update(GROUP, VERSION, HOOKS, field="spec")
@kopf.on.resume(GROUP, VERSION, HOOKS)
async def webhook_changed(body: kopf.Body, patch: kopf.Patch, retry: int, **_: Any) -> None:
    status, problem = await reconcile.reconcile_webhook(body)
    patch.status.update(status)
    _retry_unless_done(problem, retry)


@kopf.on.delete(GROUP, VERSION, HOOKS)
async def webhook_deleted(body: kopf.Body, retry: int, **_: Any) -> None:
    """Delete the subscriptions at the API, then let the object go; never keep it stuck."""
    meta = body["metadata"]
    try:
        await reconcile.delete_webhook(body)
    except keys.NotReady as exc:
        _retry_unless_given_up(exc, retry)
        log.error(
            "WebhookSubscription %s/%s deleted, but its subscriptions could not be deleted after %d "
            "attempts (%s); releasing it: delete those whose description begins with '%s' "
            "(DELETE /webhooks/subscriptions/{id})",
            meta["namespace"], meta["name"], retry + 1, exc.message, meta["uid"],
        )  # fmt: skip
        return
