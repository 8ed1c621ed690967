"""kopf handlers: read the spec, apply the children, report status. Nothing else lives here:
manifests are built in ``manifests/``, conditions computed in ``status.py``, Kubernetes reached
through ``kube.py``.

An instance is reconciled on create, update and resume, and again every
``reconcile_seconds`` by a timer: re-applying the same manifests with one field manager is a
no-op, except that a child edited or deleted by hand is put back (drift repair).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import kopf

from putplace_operator.kube import Kube
from putplace_operator.manifests import Instance, api, children
from putplace_operator.settings import OperatorSettings
from putplace_operator.status import instance_status

log = logging.getLogger(__name__)

GROUP, VERSION = "putplace.io", "v1alpha1"
SETTINGS = OperatorSettings()
_kube: Kube | None = None


def kube() -> Kube:
    global _kube
    if _kube is None:
        _kube = Kube()
    return _kube


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # A watch that silently stops delivering events is kopf's best-known failure: bound them.
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.watching.connect_timeout = 10
    settings.persistence.finalizer = "putplace.io/operator"
    settings.posting.level = logging.WARNING


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # kopf's own readers: KUBECONFIG is read when called (the client library reads it at import).
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


async def _ensure_admin_secret(i: Instance) -> None:
    """Generated once; never replaced (a new key would lock out whoever holds the old one)."""
    if await kube().get("v1", "Secret", i.admin_secret, i.namespace) is None:
        await kube().create(api.admin_secret(i, "pp_" + secrets.token_urlsafe(32)))


async def reconcile_instance(body: kopf.Body, patch: kopf.Patch) -> None:
    i = Instance.from_body(body)
    error: str | None = None
    try:
        await _ensure_admin_secret(i)
        for manifest in children(i):
            await kube().apply(manifest)
        if (i.spec.get("metrics") or {}).get("serviceMonitor") and await kube().served(
            "monitoring.coreos.com/v1", "ServiceMonitor"
        ):
            await kube().apply(api.service_monitor(i))
    except Exception as exc:  # reported in status; the timer tries again, never a tight loop
        error = f"{type(exc).__name__}: {exc}"[:500]
        log.warning("reconciling %s/%s failed: %s", i.namespace, i.name, error)
    deployment = await kube().get("apps/v1", "Deployment", i.api_name, i.namespace)
    daemon_set = await kube().get("apps/v1", "DaemonSet", i.agent_name, i.namespace)
    previous = (body.get("status") or {}).get("conditions") or []
    patch.status.update(
        instance_status(
            generation=body["metadata"].get("generation", 0),
            endpoint=i.service_url,
            deployment=deployment,
            daemon_set=daemon_set,
            agents_enabled=bool((i.spec.get("agent") or {}).get("enabled", True)),
            error=error,
            previous=list(previous),
        )
    )


@kopf.on.create(GROUP, VERSION, "putplaceinstances")
@kopf.on.update(GROUP, VERSION, "putplaceinstances", field="spec")
@kopf.on.resume(GROUP, VERSION, "putplaceinstances")
async def instance_changed(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    await reconcile_instance(body, patch)


@kopf.timer(GROUP, VERSION, "putplaceinstances", interval=SETTINGS.reconcile_seconds, initial_delay=5.0, idle=0)
async def instance_timer(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    await reconcile_instance(body, patch)
