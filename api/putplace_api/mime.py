"""MIME type of stored content, from its first bytes (pure Python: no libmagic needed)."""

from __future__ import annotations

import puremagic

__all__ = ["SNIFF_BYTES", "detect_mime", "mime_allowed"]

SNIFF_BYTES = 8192


def detect_mime(head: bytes) -> str:
    if not head:
        return "application/x-empty"
    try:
        mime = puremagic.from_string(head, mime=True)
        if mime:
            return mime
    except (puremagic.PureError, ValueError):
        pass
    try:
        # A cut in the middle of a multi-byte character at the end of the sample is fine.
        head.decode("utf-8") if len(head) < SNIFF_BYTES else head[:-4].decode("utf-8")
        return "text/plain"
    except UnicodeDecodeError:
        return "application/octet-stream"


def mime_allowed(mime: str, allowed: list[str]) -> bool:
    """An empty allow-list allows all; entries may be exact (``image/png``) or a family (``image/*``)."""
    if not allowed:
        return True
    family = mime.split("/", 1)[0] + "/*"
    return mime in allowed or family in allowed
