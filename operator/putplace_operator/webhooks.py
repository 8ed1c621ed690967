"""WebhookSubscription reconciliation: exactly one subscription per object at its instance's API,
its signing secret in a Secret. Called by the kopf handlers (``handlers.py``) and the periodic pass.

Like ApiKeys (``keys.py``, whose instance lookup and client it shares): the operator finds its
subscriptions at the API by their description (it begins with the object's uid) and keeps only the
one the Secret records; any other is an orphan of an interrupted reconcile or of a spec change
and is deleted. A changed spec (url, events, description) makes a new subscription, since they
are immutable at the API. Deleting the object deletes its subscriptions (and what is queued for
them) while the instance runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from putplace_client import PutPlaceClient
from putplace_client.errors import NotFoundError, PutPlaceClientError
from putplace_client.models import WebhookInfo
from putplace_operator import keys
from putplace_operator.keys import NotReady, _client, _instance_target, _target, at_live_instance
from putplace_operator.keys import _api_error as keys_api_error
from putplace_operator.kube import Kube, KubeError
from putplace_operator.manifests.apikey import controlled_by, made_for
from putplace_operator.manifests.common import GROUP, VERSION
from putplace_operator.manifests.webhook import SubscriptionRecord, WebhookObject, webhook_secret
from putplace_operator.settings import OperatorSettings

__all__ = ["REASONS", "Subscribed", "delete_instance_subscriptions", "delete_subscriptions", "reconcile_subscription"]

log = logging.getLogger(__name__)

# Why a subscription may not be ready: an ApiKey's reasons, with the API refusing a subscription.
REASONS = tuple(sorted({*keys.REASONS, "SubscriptionRejected"} - {"KeyRejected"}))


@dataclass(frozen=True)
class Subscribed:
    subscription_id: str
    secret_name: str


def _api_error(exc: PutPlaceClientError, url: str) -> NotReady:
    return keys_api_error(exc, url, ("SubscriptionRejected", "the subscription"))


async def _mine(api: PutPlaceClient, w: WebhookObject) -> dict[str, WebhookInfo]:
    return {s.id: s for s in await api.list_webhooks() if w.owns(s.description)}


async def _delete(api: PutPlaceClient, subscription_id: str) -> None:
    try:
        await api.delete_webhook(subscription_id)
    except NotFoundError:
        pass  # already gone: what we wanted


async def reconcile_subscription(w: WebhookObject, kube: Kube, settings: OperatorSettings) -> Subscribed:
    """Make the Secret hold the secret of a live subscription as the spec asks. Idempotent."""
    try:
        target = await _target(w, kube, settings)
        if target.deleting:
            raise NotReady("InstanceNotFound", f"PutPlaceInstance {w.instance} is being deleted in {w.namespace}")
        secret = await kube.get("v1", "Secret", w.secret_name, w.namespace)
        if secret is not None and not controlled_by(secret, w.uid):
            raise NotReady(
                "SecretConflict",
                f"Secret {w.secret_name} exists and does not belong to this WebhookSubscription; "
                "choose another spec.secretName",
                permanent=True,
            )
        found = SubscriptionRecord.from_secret(secret)
        try:
            async with _client(target, settings) as api:
                live = await _mine(api, w)
                if found is not None and found[0].subscription_id in live and found[0].checksum == w.checksum:
                    record, signing = found
                else:
                    created = await api.create_webhook(w.url, w.events, description=w.api_description)
                    record, signing = SubscriptionRecord(created.id, w.checksum), created.secret
                    log.info("subscribed %s for WebhookSubscription %s/%s", created.id, w.namespace, w.name)
                # Written at once, and again on every pass (puts back a Secret edited by hand).
                await kube.apply(webhook_secret(w, signing, record))
                for orphan in set(live) - {record.subscription_id}:
                    log.info("deleting subscription %s of %s/%s: no longer current", orphan, w.namespace, w.name)
                    await _delete(api, orphan)
        except PutPlaceClientError as exc:
            raise _api_error(exc, target.url) from None
    except KubeError as exc:
        raise NotReady("KubernetesError", f"the Kubernetes API said: {exc}") from None
    return Subscribed(record.subscription_id, w.secret_name)


async def delete_subscriptions(w: WebhookObject, kube: Kube, settings: OperatorSettings) -> bool:
    """Delete a deleted object's subscriptions. False: nothing to delete at (the instance is gone)."""

    async def delete(api: PutPlaceClient) -> None:
        for subscription_id in await _mine(api, w):
            await _delete(api, subscription_id)

    return await at_live_instance(w, kube, settings, delete, _api_error)


async def delete_instance_subscriptions(body: Mapping[str, Any], kube: Kube, settings: OperatorSettings) -> int:
    """At a deleted instance's API, delete the subscriptions the operator made there for the
    WebhookSubscriptions of this instance (and orphans of its namespace), so a database that
    outlives the instance sends no event anywhere. Before its keys are revoked: this needs the
    admin key. Returns how many; raises ``NotReady`` when the API does not answer."""
    try:
        target = await _instance_target(body, kube, settings)
        objects = [WebhookObject.from_body(b) for b in await kube.list(f"{GROUP}/{VERSION}", "WebhookSubscription")]
    except NotReady:
        return 0  # no admin key: nothing was ever subscribed with it
    except KubeError as exc:
        if exc.status == 404:  # the CRD is not installed
            return 0
        raise NotReady("KubernetesError", f"the Kubernetes API said: {exc}") from None
    i = target.instance
    others = {w.uid for w in objects if w.namespace == i.namespace and w.instance != i.name}
    deleted = 0
    try:
        async with _client(target, settings) as api:
            for sub in await api.list_webhooks():
                owner = made_for(sub.description or "")
                if owner is not None and owner[1] == i.namespace and owner[0] not in others:
                    await _delete(api, sub.id)
                    deleted += 1
    except PutPlaceClientError as exc:
        raise _api_error(exc, target.url) from None
    return deleted
