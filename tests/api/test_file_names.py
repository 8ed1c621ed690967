"""The name encoding (``putplace_client.names``) over many byte strings: every name decodes back
to its bytes, no two byte strings share a stored name, and what the old server stored for a
non-UTF-8 name is read back as that name (``store.migrations.legacy_name``)."""

from __future__ import annotations

import os
import random
import re

from putplace_api.store.migrations import legacy_name
from putplace_client import names

SEED = 20261203
# Backslashes and the text of escapes next to bytes that are not UTF-8 (or are, in pieces).
PIECES = [b"\\", b"\\\\", b"x", b"\\x", b"e9", b"\\xe9", b"\\x2d", b"\xe9", b"\xff", b"\xc3", b"\xa9", b"\xc3\xa9"]
PIECES += [b"\xed\xa0\x80", b"/", b"a", "日本".encode(), b"\x80"]


def sample(n: int = 5000) -> set[bytes]:
    rng = random.Random(SEED)
    return {b"".join(rng.choice(PIECES) for _ in range(rng.randint(1, 8))) for _ in range(n)}


def test_every_name_decodes_to_its_bytes_and_no_two_share_one() -> None:
    seen: dict[names.Name, bytes] = {}
    for raw in sample():
        name = names.from_bytes(raw)
        assert names.to_bytes(name) == raw, raw
        assert name.escaped != _is_utf8(raw), raw
        assert seen.setdefault(name, raw) == raw, (raw, seen[name])
        # The other ways a client may send it name the same pair.
        assert names.from_text(os.fsdecode(raw)) == name, raw
        assert names.canonical(names.escape(raw), True) == name, raw
        assert names.canonical(_upper_hex(names.escape(raw)), True) == name, raw


def test_what_the_old_server_escaped_is_read_as_that_name() -> None:
    for raw in sample():
        old = raw.decode("utf-8", "backslashreplace")
        if b"\\x" in raw:
            continue  # a literal \xNN is ambiguous: README, "Upgrades"; test_store_contract has cases
        assert legacy_name(old) == (names.Name(old) if _is_utf8(raw) else names.from_bytes(raw)), raw


def _upper_hex(escaped: str) -> str:
    return re.sub(
        r"\\\\|\\x[0-9a-f]{2}", lambda m: m.group() if m.group() == "\\\\" else "\\x" + m.group()[2:].upper(), escaped
    )


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
