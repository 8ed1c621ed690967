"""Schema and data migrations of the metadata stores, one module per backend.

``sqlite.py`` keeps the SQLite schema version in ``PRAGMA user_version`` and upgrades a database
step by step when the store opens it; ``mongo.py`` does the same for MongoDB, where a marker
document records each finished migration. A new migration is one more step in each.

This module holds what both need: how a record written by an older server reads today.
"""

from __future__ import annotations

import re

from putplace_client import names

__all__ = ["legacy_name"]

# What the old escape_path wrote for a byte that is not UTF-8 (always >= 0x80, lower-case hex).
_LEGACY_BYTE = re.compile(r"\\x([89a-f][0-9a-f])")


def legacy_name(text: str) -> names.Name:
    """The name a file path stored before names were flagged (schema 0) stands for.

    The old server stored a non-UTF-8 name as ``bytes.decode(errors="backslashreplace")`` and a
    valid name verbatim, so a text holding ``\\xNN`` is ambiguous. It is read as escaped only
    if the old server could have written it: replacing each ``\\xNN`` (NN >= 0x80) by that byte
    gives bytes that are not valid UTF-8 and that decode back to exactly this text. Anything
    else is a literal name -- e.g. systemd's ``dev-disk-by\\x2duuid-….swap``: ``\\x2d`` is
    valid UTF-8, which the old server never escaped.
    """
    if "\\x" not in text:
        return names.Name(text)
    parts = _LEGACY_BYTE.split(text)  # text, hex, text, hex, ..., text
    if len(parts) == 1:
        return names.Name(text)
    try:
        raw = b"".join(bytes((int(p, 16),)) if i % 2 else p.encode("utf-8") for i, p in enumerate(parts))
    except UnicodeEncodeError:
        return names.Name(text)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        if raw.decode("utf-8", "backslashreplace") == text:
            return names.from_bytes(raw)
    return names.Name(text)
