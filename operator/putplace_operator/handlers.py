"""kopf handlers: read the object, call the reconcile, report status. Nothing else lives here:
manifests are built in ``manifests/``, keys handled in ``keys.py``, conditions computed in
``status.py``, Kubernetes reached through ``kube.py``.

Each object is reconciled on create, update and resume, and again every ``reconcile_seconds``
by a timer: re-applying the same manifests with one field manager is a no-op, except that a
child edited or deleted by hand is put back (drift repair); for an ApiKey the timer also revokes
a rotated-out key once its grace period is over. While an instance is on its way to Ready, a
second timer refreshes its status every ``progress_seconds``. A per-object lock keeps the
timers and a change handler from reconciling one object at once.

Retries never storm: a failing change handler is retried with exponential backoff (capped), a
permanent error (e.g. a Secret name taken by someone else) is not retried until the spec
changes, and the timer's attempts come at the reconcile period, reported in status.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import kopf

from putplace_operator import keys, metrics
from putplace_operator.kube import Kube, KubeError
from putplace_operator.manifests import Instance, api, children
from putplace_operator.manifests.apikey import ApiKeyObject
from putplace_operator.manifests.common import GROUP, VERSION
from putplace_operator.settings import OperatorSettings
from putplace_operator.status import instance_status, key_status

log = logging.getLogger(__name__)

INSTANCES, KEYS = "putplaceinstances", "apikeys"
SETTINGS = OperatorSettings()
_kube: Kube | None = None
_locks: dict[str, asyncio.Lock] = {}


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


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # A watch that silently stops delivering events is kopf's best-known failure: bound them.
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.watching.connect_timeout = 10
    settings.persistence.finalizer = "putplace.io/operator"
    # An object being deleted waits for its timers to stop; one caught mid-run would otherwise be
    # looked at again only after 60 s, holding the deletion that long.
    settings.background.instant_exit_timeout = 2.0
    settings.background.cancellation_polling = 1.0
    settings.posting.level = logging.WARNING


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # kopf's own readers: KUBECONFIG is read when called (the client library reads it at import).
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def _conditions(body: kopf.Body) -> list[dict[str, Any]]:
    return list((body.get("status") or {}).get("conditions") or [])


# -- PutPlaceInstance --------------------------------------------------------------------------


async def _ensure_admin_secret(i: Instance) -> None:
    """Generated once; never replaced (a new key would lock out whoever holds the old one)."""
    if await kube().get("v1", "Secret", i.admin_secret, i.namespace) is None:
        await kube().create(api.admin_secret(i, "pp_" + secrets.token_urlsafe(32)))


async def reconcile_instance(body: kopf.Body, patch: kopf.Patch, *, apply: bool = True) -> None:
    """Apply the children (unless ``apply`` is False: status only), then report what they say."""
    i = Instance.from_body(body)
    async with _exclusive(i.uid):
        with metrics.reconciling("PutPlaceInstance") as outcome:
            error: str | None = None
            try:
                if apply:
                    await _apply_children(i)
            except KubeError as exc:  # reported in status; the timer tries again, never a tight loop
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
            patch.status.update(status)
            metrics.set_ready("PutPlaceInstance", i.uid, status["conditions"][0]["status"] == "True")


async def _apply_children(i: Instance) -> None:
    await _ensure_admin_secret(i)
    for manifest in children(i):
        await kube().apply(manifest)
    if (i.spec.get("metrics") or {}).get("serviceMonitor") and await kube().served(
        "monitoring.coreos.com/v1", "ServiceMonitor"
    ):
        await kube().apply(api.service_monitor(i))


def _progressing(body: kopf.Body) -> bool:
    """On its way to Ready: not Ready for the current spec, and not failed (a failure stands until
    the next full reconcile, which alone can tell whether it is over)."""
    status = body.get("status") or {}
    current = status.get("observedGeneration") == body["metadata"].get("generation")
    true = {c["type"] for c in status.get("conditions") or [] if c["status"] == "True"}
    return not (current and "Ready" in true) and "Degraded" not in true


@kopf.on.create(GROUP, VERSION, INSTANCES)
@kopf.on.update(GROUP, VERSION, INSTANCES, field="spec")
@kopf.on.resume(GROUP, VERSION, INSTANCES)
async def instance_changed(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    await reconcile_instance(body, patch)


@kopf.timer(GROUP, VERSION, INSTANCES, interval=SETTINGS.reconcile_seconds, initial_delay=5.0, idle=0)
async def instance_timer(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    await reconcile_instance(body, patch)


@kopf.timer(GROUP, VERSION, INSTANCES, interval=SETTINGS.progress_seconds, idle=0)
async def instance_progress(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """While an instance is on its way, its status follows its pods closely (then the full
    reconcile's period takes over): two reads, nothing applied."""
    if _progressing(body):
        await reconcile_instance(body, patch, apply=False)


@kopf.on.delete(GROUP, VERSION, INSTANCES, optional=True)
async def instance_deleted(body: kopf.Body, **_: Any) -> None:
    metrics.forget("PutPlaceInstance", body["metadata"]["uid"])
    _locks.pop(body["metadata"]["uid"], None)


# -- ApiKey ------------------------------------------------------------------------------------


async def reconcile_apikey(body: kopf.Body, patch: kopf.Patch) -> keys.NotReady | None:
    """One attempt; the status says how it went. Returns why the key is not ready (None: it is)."""
    k = ApiKeyObject.from_body(body)
    generation = body["metadata"].get("generation", 0)
    async with _exclusive(k.uid):
        with metrics.reconciling("ApiKey") as outcome:
            try:
                done = await keys.reconcile_key(k, kube(), SETTINGS)
            except keys.NotReady as exc:
                outcome.reason = exc.reason
                why = (exc.reason, exc.message)
                patch.status.update(
                    key_status(
                        generation=generation,
                        previous=_conditions(body),
                        failed=why if exc.permanent else None,
                        waiting=None if exc.permanent else why,
                    )
                )
                metrics.set_ready("ApiKey", k.uid, False)
                return exc
            record = done.record
            patch.status.update(
                key_status(
                    generation=generation,
                    previous=_conditions(body),
                    key_id=record.key_id,
                    secret_name=done.secret_name,
                    rotation=record.rotation,
                    previous_key_id=record.previous_key_id,
                    revoke_after=record.revoke_after.strftime("%Y-%m-%dT%H:%M:%SZ") if record.revoke_after else None,
                )
            )
            metrics.set_ready("ApiKey", k.uid, True)
            return None


@kopf.on.create(GROUP, VERSION, KEYS)
@kopf.on.update(GROUP, VERSION, KEYS, field="spec")
@kopf.on.resume(GROUP, VERSION, KEYS)
async def apikey_changed(body: kopf.Body, patch: kopf.Patch, retry: int, **_: Any) -> None:
    problem = await reconcile_apikey(body, patch)
    if problem is None:
        return
    if problem.permanent:
        raise kopf.PermanentError(f"{problem.reason}: {problem.message}")
    raise kopf.TemporaryError(f"{problem.reason}: {problem.message}", delay=SETTINGS.backoff(retry))


@kopf.timer(GROUP, VERSION, KEYS, interval=SETTINGS.reconcile_seconds, initial_delay=SETTINGS.reconcile_seconds)
async def apikey_timer(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    await reconcile_apikey(body, patch)


@kopf.on.delete(GROUP, VERSION, KEYS)
async def apikey_deleted(body: kopf.Body, retry: int, **_: Any) -> None:
    """Revoke the keys at the API, then let the object go; never keep it stuck."""
    k = ApiKeyObject.from_body(body)
    metrics.forget("ApiKey", k.uid)
    try:
        async with _exclusive(k.uid):
            revoked = await keys.revoke_all(k, kube(), SETTINGS)
    except keys.NotReady as exc:
        if retry >= SETTINGS.delete_retries:
            log.error(
                "ApiKey %s/%s deleted, but its keys could not be revoked after %d attempts (%s); releasing it: "
                "revoke the keys named '%s …' with PUT /api_keys/{id}/revoke",
                k.namespace, k.name, retry + 1, exc.message, k.uid,
            )  # fmt: skip
            return
        raise kopf.TemporaryError(f"{exc.reason}: {exc.message}", delay=SETTINGS.backoff(retry)) from None
    finally:
        _locks.pop(k.uid, None)
    if not revoked:
        log.info("ApiKey %s/%s released: its instance is gone, and its keys with it", k.namespace, k.name)
