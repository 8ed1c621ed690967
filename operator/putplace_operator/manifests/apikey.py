"""An ApiKey object as the operator reads it, and the Secret that delivers its key.

The Secret is the record of which key is current: besides the key and the API URL it carries, as
annotations, the key's id at the API, the rotation and spec checksum the key was made for, and the
rotated-out key still to be revoked. The operator writes it right after creating a key at the
API, before anything else, so a restart anywhere in a reconcile finds what it did (see
``putplace_operator.keys``).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from putplace_operator.manifests.api import KEY_FIELD
from putplace_operator.manifests.common import InstanceChild, Manifest, checksum, child_secret

__all__ = ["URL_FIELD", "ApiKeyObject", "KeyRecord", "controlled_by", "key_secret", "made_for"]

URL_FIELD = "api-url"  # beside KEY_FIELD: where the key works (the in-cluster Service URL)
_PREFIX = "putplace.io/"
_KEY_ID, _ROTATION, _CHECKSUM = _PREFIX + "key-id", _PREFIX + "rotation", _PREFIX + "spec-checksum"
_PREVIOUS, _REVOKE_AFTER = _PREFIX + "previous-key-id", _PREFIX + "revoke-after"
# A key's name at the API as ``ApiKeyObject.api_name`` makes it: "<uid> <namespace>/<name>".
_API_NAME = re.compile(r"(?P<uid>[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}) (?P<namespace>[a-z0-9-]{1,63})/")


@dataclass(frozen=True)
class ApiKeyObject(InstanceChild):
    """An ApiKey."""

    @property
    def rotation(self) -> int:
        return int(self.spec.get("rotation", 0))

    @property
    def scopes(self) -> list[str]:
        return list(self.spec["scopes"])

    @property
    def checksum(self) -> str:
        """What a key is made with, beside the rotation: a change needs a new key (keys are immutable)."""
        made_with = {k: self.spec.get(k) for k in ("scopes", "rateLimit", "expiresAt", "description")}
        made_with["scopes"] = sorted(self.scopes)
        # Limits count only when set, so a key made before they existed keeps its checksum.
        for name in ("hostnames", "pathPrefixes"):
            if self.spec.get(name) is not None:
                made_with[name] = sorted(self.spec[name])
        if self.spec.get("quota"):
            made_with["quota"] = self.spec["quota"]
        return checksum(made_with)[:16]

    @property
    def api_name(self) -> str:
        """The key's name at the API: the uid first, which is how the operator finds its keys there."""
        return f"{self.uid} {self.namespace}/{self.name}"[:100]

    def owns(self, name: str) -> bool:
        return name.startswith(self.uid + " ")


@dataclass(frozen=True)
class KeyRecord:
    """Which key a Secret holds, from its annotations."""

    key_id: str
    rotation: int
    checksum: str
    previous_key_id: str | None = None
    revoke_after: datetime | None = None

    @classmethod
    def from_secret(cls, secret: Mapping[str, Any] | None) -> tuple[KeyRecord, str] | None:
        """The record and the key of a Secret written by ``key_secret``; None if it is not one."""
        if secret is None:
            return None
        notes = (secret.get("metadata") or {}).get("annotations") or {}
        data = secret.get("data") or {}
        try:
            record = cls(
                key_id=notes[_KEY_ID],
                rotation=int(notes[_ROTATION]),
                checksum=notes[_CHECKSUM],
                previous_key_id=notes.get(_PREVIOUS) or None,
                revoke_after=datetime.fromisoformat(notes[_REVOKE_AFTER]) if notes.get(_REVOKE_AFTER) else None,
            )
            key = base64.b64decode(data[KEY_FIELD]).decode()
        except (KeyError, ValueError):
            return None
        return record, key

    def annotations(self) -> dict[str, str]:
        notes = {_KEY_ID: self.key_id, _ROTATION: str(self.rotation), _CHECKSUM: self.checksum}
        if self.previous_key_id:
            notes[_PREVIOUS] = self.previous_key_id
        if self.revoke_after:
            notes[_REVOKE_AFTER] = self.revoke_after.isoformat()
        return notes


def made_for(name: str) -> tuple[str, str] | None:
    """(uid, namespace) of the ApiKey a key at the API was made for, from the key's name; None if
    the operator did not make it (a key made by hand through the admin key, the admin key)."""
    found = _API_NAME.match(name)
    return (found["uid"], found["namespace"]) if found else None


def controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def key_secret(k: ApiKeyObject, key: str, url: str, record: KeyRecord) -> Manifest:
    """The Secret with the key, owned by its ApiKey (deleting the ApiKey deletes it)."""
    return child_secret(k, "ApiKey", "api-key", record.annotations(), {KEY_FIELD: key, URL_FIELD: url})
