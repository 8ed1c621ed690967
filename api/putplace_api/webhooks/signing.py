"""Signing a delivery: HMAC-SHA256 of ``"<timestamp>.<body>"`` with the subscription's secret.

The timestamp is inside what is signed, so a receiver that refuses old timestamps refuses a
replayed request too; the delivery id (``X-PutPlace-Delivery``) lets it drop a repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

__all__ = ["SECRET_PREFIX", "new_secret", "sign", "verify_signature"]

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-PutPlace-Signature`` value: ``sha256=<hex>``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str, timestamp: str, body: bytes, signature: str, tolerance: float = 300, now: float | None = None
) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance and hmac.compare_digest(sign(secret, timestamp, body), signature)
