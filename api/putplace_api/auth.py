"""API keys: generation, hashing, verification, scopes, restrictions and the bootstrap admin key.

Keys are 256-bit random tokens with a ``pp_`` prefix. Only their SHA-256 is stored; a
presented key is looked up by hash and compared in constant time. ``last_used_at`` is kept
in memory and flushed in batches, so authentication costs no database write.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from putplace_api.errors import Forbidden, Unauthorized
from putplace_api.store.base import KeyRow, MetadataStore, Visibility, new_id
from putplace_client.models import Scope

__all__ = [
    "KEY_PREFIX",
    "MISSING_KEY",
    "INVALID_KEY",
    "Principal",
    "Authenticator",
    "generate_key",
    "hash_key",
    "make_key_row",
]

KEY_PREFIX = "pp_"
MISSING_KEY = "API key required. Include X-API-Key header."
INVALID_KEY = "Invalid or inactive API key"
ADMIN_KEY_FILE = "admin-key"
AGENT_KEY_FILE = "agent-key"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def make_key_row(
    key: str,
    name: str,
    scopes: tuple[str, ...],
    *,
    description: str | None = None,
    rate_limit: float | None = None,
    rate_limit_burst: int | None = None,
    expires_at: datetime | None = None,
    hostnames: tuple[str, ...] | None = None,
    path_prefixes: tuple[str, ...] | None = None,
    max_bytes: int | None = None,
    max_files: int | None = None,
) -> KeyRow:
    return KeyRow(
        id=new_id(),
        name=name,
        description=description,
        key_hash=hash_key(key),
        key_prefix=key[: len(KEY_PREFIX) + 6],
        scopes=scopes,
        rate_limit=rate_limit,
        rate_limit_burst=rate_limit_burst,
        expires_at=expires_at,
        created_at=datetime.now(UTC),
        hostnames=hostnames,
        path_prefixes=path_prefixes,
        max_bytes=max_bytes,
        max_files=max_files,
    )


@dataclass(frozen=True, slots=True)
class Principal:
    """The key a request authenticated with (never the key itself)."""

    key_id: str
    name: str
    scopes: frozenset[str]
    rate_limit: float | None = None
    rate_limit_burst: int | None = None
    visible: Visibility | None = None  # None: the key sees and writes every record
    max_bytes: int | None = None
    max_files: int | None = None

    def allows(self, scope: Scope) -> bool:
        return scope.value in self.scopes or Scope.ADMIN.value in self.scopes

    def check_path(self, hostname: str, filepath: str) -> None:
        """Refuse (403) a named record outside the key's hosts and paths. Naming it leaks nothing:
        the refusal is the same whether or not the record exists."""
        if self.visible is not None and not self.visible.allows(hostname, filepath):
            raise Forbidden(f"This API key may not access {filepath} on {hostname}: {describe(self.visible)}")


def describe(v: Visibility) -> str:
    """The limits of a key, for its refusals (they are the caller's own key's)."""
    parts = []
    if v.hostnames is not None:
        parts.append("hosts " + ", ".join(v.hostnames[:5]) + (", ..." if len(v.hostnames) > 5 else ""))
    if v.path_prefixes is not None:
        parts.append("paths under " + ", ".join(v.path_prefixes[:5]) + (", ..." if len(v.path_prefixes) > 5 else ""))
    return "it is limited to " + " and ".join(parts)


def visibility(row: KeyRow) -> Visibility | None:
    if row.hostnames is None and row.path_prefixes is None:
        return None
    return Visibility(row.hostnames, row.path_prefixes)


class Authenticator:
    def __init__(self, store: MetadataStore) -> None:
        self._store = store
        self._last_used: dict[str, datetime] = {}
        self._inflight: dict[str, asyncio.Future[KeyRow | None]] = {}

    async def _lookup(self, digest: str) -> KeyRow | None:
        """Concurrent requests with one key share one database lookup. There is no cache:
        a lookup only serves requests that arrived while it ran, so a revocation still
        takes effect on the next request."""
        pending = self._inflight.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(self._store.key_by_hash(digest))
            self._inflight[digest] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(digest, None))
        # Shielded: one client going away must not cancel the lookup the others wait on.
        return await asyncio.shield(pending)

    async def authenticate(self, presented: str | None, now: datetime) -> Principal:
        if not presented:
            raise Unauthorized(MISSING_KEY)
        digest = hash_key(presented)
        row = await self._lookup(digest)
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            raise Unauthorized(INVALID_KEY)
        if not row.is_active or (row.expires_at is not None and row.expires_at <= now):
            raise Unauthorized(INVALID_KEY)
        self._last_used[row.id] = now
        return Principal(
            row.id,
            row.name,
            frozenset(row.scopes),
            row.rate_limit,
            row.rate_limit_burst,
            visibility(row),
            row.max_bytes,
            row.max_files,
        )

    async def flush_last_used(self) -> None:
        pending, self._last_used = self._last_used, {}
        try:
            await self._store.touch_keys(pending)
        except Exception:
            # Keep the newest times for the next flush rather than losing them.
            for key_id, when in pending.items():
                self._last_used[key_id] = max(when, self._last_used.get(key_id, when))
            raise

    async def bootstrap_admin(self, configured: str | None, data_dir: Path) -> str | None:
        """Make sure an admin key exists. Returns a newly generated key (to show once)."""
        now = datetime.now(UTC)
        if configured:
            if await self._store.key_by_hash(hash_key(configured)) is None and await self._store.claim(
                f"admin-key:{hash_key(configured)}", now
            ):
                await self._store.insert_key(make_key_row(configured, "bootstrap admin", (Scope.ADMIN.value,)))
            return None
        if not await self._store.claim("admin-key:generated", now):
            return None  # another process (or an earlier start) already made one
        key = generate_key()
        await self._store.insert_key(make_key_row(key, "bootstrap admin", (Scope.ADMIN.value,)))
        write_secret_file(data_dir / ADMIN_KEY_FILE, key)
        print(
            f"PutPlace generated an admin API key (shown once; also in {data_dir / ADMIN_KEY_FILE}, mode 0600):\n"
            f"  {key}",
            file=sys.stderr,
            flush=True,
        )
        return key

    async def local_agent_key(self, path: Path) -> None:
        """A write-only key for the agent the CLI runs beside the API (``--sync``), kept in ``path``.

        Reused across restarts while it is still valid; replaced if it was revoked or deleted.
        """
        try:
            key = path.read_text().strip()
        except FileNotFoundError:
            key = ""
        row = await self._store.key_by_hash(hash_key(key)) if key else None
        if row is not None and row.revoked_at is None and row.expires_at is None:
            return
        key = generate_key()
        await self._store.insert_key(make_key_row(key, "local agent", (Scope.WRITE.value,)))
        write_secret_file(path, key)


def write_secret_file(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.chmod(path, 0o600)
