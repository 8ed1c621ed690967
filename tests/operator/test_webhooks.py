"""WebhookSubscriptions end to end: the operator -- a real ``putplace-operator`` process with only
the chart's RBAC -- subscribes a real receiver at a real ``putplace-api`` process, delivers the
signing secret in a Secret (the receiver checks real events with it), replaces the subscription
when the spec changes and deletes it with the object."""

from __future__ import annotations

import base64
from typing import Any

import httpx

from tests.api.conftest import meta
from tests.operator.conftest import OperatorProcess, condition
from tests.operator.test_apikeys import api, instance, operator
from tests.processes import ApiProcess, metric
from tests.servers import KubeCluster
from tests.waiting import wait_until
from tests.webhook_receiver import receiving

__all__ = ["api", "instance", "operator"]  # test_apikeys' fixtures: one API and one operator per module

INSTANCE = "pp"


def hook(name: str, url: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "putplace.io/v1alpha1",
        "kind": "WebhookSubscription",
        "metadata": {"name": name},
        "spec": {"instanceRef": {"name": INSTANCE}, "url": url, **spec},
    }


def wait_subscribed(kube: KubeCluster, namespace: str, name: str, timeout: float = 30) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = dict(kube.get("webhooksubscription", name, "-n", namespace))
        ok = condition(obj, "Ready") == ("True", "Subscribed")
        return obj if ok and obj["status"]["observedGeneration"] == obj["metadata"]["generation"] else None

    return wait_until(ready, timeout, f"WebhookSubscription {name} Ready")


def live(api: ApiProcess, uid: str) -> list[dict[str, Any]]:
    with api.http() as c:
        subs = c.get("/webhooks/subscriptions").raise_for_status().json()
    return [s for s in subs if (s["description"] or "").startswith(uid + " ")]


def signing_secret(kube: KubeCluster, namespace: str, name: str) -> str:
    return base64.b64decode(kube.get("secret", name, "-n", namespace)["data"]["secret"]).decode()


def test_a_subscription_is_made_delivered_replaced_and_deleted_with_its_object(
    api: ApiProcess, operator: OperatorProcess, crds: KubeCluster, instance: str
) -> None:
    with receiving() as receiver:
        crds.apply(
            hook("audit", receiver.url(), events=["file.deleted"], description="audit trail"), namespace=instance
        )
        obj = wait_subscribed(crds, instance, "audit")
        uid = obj["metadata"]["uid"]
        secret = signing_secret(crds, instance, "audit")
        assert secret.startswith("whsec_") and secret not in str(obj)
        (made,) = live(api, uid)
        assert made["id"] == obj["status"]["subscriptionId"] and obj["status"]["secretName"] == "audit"
        assert (made["url"], made["events"]) == (receiver.url(), ["file.deleted"])
        assert made["description"].endswith(": audit trail")

        # A real event reaches the receiver, signed with the secret the Secret holds.
        path = f"/op/{uid}"
        with api.http() as c:
            assert c.post("/put_file", json=meta(filepath=path)).status_code == 201
            assert c.delete("/files", params={"hostname": "node-1", "filepath": path}).status_code == 200
        (got,) = receiver.wait_for(1)
        assert got.payload["data"]["filepath"] == path and got.signed_by(secret)

        # A changed spec: a new subscription and secret; the old one is gone at the API.
        crds.apply(hook("audit", receiver.url(), events=["file.deleted", "file.uploaded"]), namespace=instance)
        changed = wait_subscribed(crds, instance, "audit")  # Ready for the new generation
        assert changed["status"]["subscriptionId"] != made["id"]
        (replaced,) = live(api, uid)  # the old one was deleted before the status said Ready
        assert replaced["id"] == changed["status"]["subscriptionId"]
        assert sorted(replaced["events"]) == ["file.deleted", "file.uploaded"]
        assert signing_secret(crds, instance, "audit") != secret

        # Deleted: the subscription goes at the API, the Secret with the object.
        crds.kubectl("delete", "webhooksubscription", "audit", "-n", instance, "--wait=true")
        assert live(api, uid) == []

    text = httpx.get(operator.metrics_url, timeout=5).text
    assert metric(text, 'putplace_operator_reconciles_total{kind="WebhookSubscription",result="success"}') >= 1


def test_a_missing_instance_is_reported_in_status(
    api: ApiProcess, operator: OperatorProcess, crds: KubeCluster, instance: str
) -> None:
    crds.apply(
        {
            **hook("lost", "http://127.0.0.1:9/x"),
            "spec": {"instanceRef": {"name": "nope"}, "url": "http://127.0.0.1:9/x"},
        },
        namespace=instance,
    )

    def waiting() -> bool:
        obj = dict(crds.get("webhooksubscription", "lost", "-n", instance))
        return condition(obj, "Ready") == ("False", "InstanceNotFound")

    wait_until(waiting, 30, "InstanceNotFound in status")


def test_deleting_the_instance_deletes_its_subscriptions_at_the_api(
    api: ApiProcess, operator: OperatorProcess, crds: KubeCluster, instance: str
) -> None:
    crds.apply(hook("gone-with-it", "http://127.0.0.1:9/x"), namespace=instance)
    uid = wait_subscribed(crds, instance, "gone-with-it")["metadata"]["uid"]
    assert len(live(api, uid)) == 1
    crds.kubectl("delete", "putplaceinstance", INSTANCE, "-n", instance, "--wait=true")
    assert live(api, uid) == [], "a database that outlives the instance must not keep sending its events"
