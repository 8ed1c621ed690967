"""A WebhookSubscription as the operator reads it, and the Secret that delivers its signing secret.

As for ApiKeys, the Secret is the record of which subscription is current: its annotations carry
the subscription's id at the API and the checksum of the spec it was made for. Subscriptions are
immutable at the API, so a changed spec means a new subscription (and a new secret).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from putplace_operator.manifests.common import InstanceChild, Manifest, checksum, child_secret

__all__ = ["SECRET_FIELD", "URL_FIELD", "SubscriptionRecord", "WebhookObject", "webhook_secret"]

SECRET_FIELD = "secret"  # the signing secret (X-PutPlace-Signature)
URL_FIELD = "url"  # where the events go, beside it
_SUBSCRIPTION_ID, _CHECKSUM = "putplace.io/subscription-id", "putplace.io/spec-checksum"


@dataclass(frozen=True)
class WebhookObject(InstanceChild):
    """A WebhookSubscription."""

    @property
    def url(self) -> str:
        return str(self.spec["url"])

    @property
    def events(self) -> list[str] | None:
        events = self.spec.get("events")
        return sorted(events) if events else None

    @property
    def checksum(self) -> str:
        return checksum({"url": self.url, "events": self.events, "description": self.spec.get("description")})[:16]

    @property
    def api_description(self) -> str:
        """The subscription's description at the API: the uid first, which is how the operator finds it there."""
        own = self.spec.get("description")
        return f"{self.uid} {self.namespace}/{self.name}" + (f": {own}" if own else "")

    def owns(self, description: str | None) -> bool:
        return bool(description) and str(description).startswith(self.uid + " ")


@dataclass(frozen=True)
class SubscriptionRecord:
    subscription_id: str
    checksum: str

    @classmethod
    def from_secret(cls, secret: Mapping[str, Any] | None) -> tuple[SubscriptionRecord, str] | None:
        """The record and the signing secret of a Secret written by ``webhook_secret``."""
        if secret is None:
            return None
        notes = (secret.get("metadata") or {}).get("annotations") or {}
        try:
            record = cls(notes[_SUBSCRIPTION_ID], notes[_CHECKSUM])
            signing = base64.b64decode((secret.get("data") or {})[SECRET_FIELD]).decode()
        except (KeyError, ValueError):
            return None
        return record, signing


def webhook_secret(w: WebhookObject, signing: str, record: SubscriptionRecord) -> Manifest:
    """The Secret with the signing secret, owned by its WebhookSubscription (deleted with it)."""
    notes = {_SUBSCRIPTION_ID: record.subscription_id, _CHECKSUM: record.checksum}
    return child_secret(w, "WebhookSubscription", "webhook", notes, {SECRET_FIELD: signing, URL_FIELD: w.url})
