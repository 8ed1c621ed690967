"""Per-key quotas on what uploads store: the check before an upload, and the hold it keeps.

A content counts against the key whose upload stores it first (``ContentRow.stored_by``),
once, with its size; what is stored already costs nothing. The store answers what a key has
stored; the uploads of a key still in flight in this process are held here and counted as if
stored, so uploads running side by side cannot overshoot the quota together. Reading the usage
and taking a hold happen under one lock per key, and so do marking a content stored and giving
its hold back: a reader never misses an upload between the two, nor counts it twice. Replicas
do not share holds: uploads of one key on several replicas at once can overshoot by what they
carry (the next one is refused).

Called by ``putplace_api.uploads``; no FastAPI here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from putplace_api.auth import Principal
from putplace_api.store.base import KeyUsage, MetadataStore

__all__ = ["Quotas", "has_quota", "refusal", "bytes_refusal"]


def has_quota(key: Principal | None) -> bool:
    return key is not None and (key.max_bytes is not None or key.max_files is not None)


def refusal(key: Principal, used: KeyUsage, size: int) -> str | None:
    """Why storing one more content of ``size`` bytes would take the key over a quota, or None."""
    if key.max_files is not None and used.files + 1 > key.max_files:
        return f"This API key's quota of {key.max_files} files is used up ({used.files} stored)"
    if key.max_bytes is not None and used.bytes + size > key.max_bytes:
        return bytes_refusal(key.max_bytes, used, f"this content of {size} bytes")
    return None


def bytes_refusal(max_bytes: int, used: KeyUsage, what: str) -> str:
    left = max(0, max_bytes - used.bytes)
    return f"This API key's quota of {max_bytes} bytes has {left} left ({used.bytes} stored): too little for {what}"


def _plus(a: KeyUsage, b: KeyUsage) -> KeyUsage:
    return KeyUsage(a.files + b.files, a.bytes + b.bytes)


class Quotas:
    def __init__(self) -> None:
        self._held: dict[str, KeyUsage] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, key_id: str) -> asyncio.Lock:
        return self._locks.setdefault(key_id, asyncio.Lock())

    async def admit(
        self, store: MetadataStore, key: Principal, sizes: Sequence[int]
    ) -> tuple[list[str | None], KeyUsage]:
        """For contents of ``sizes``, in order: None for each that fits (and is held from now on,
        until ``stored`` or ``release``), or why it does not. Also the usage before them."""
        async with self._lock(key.key_id):
            stored = (await store.key_usage([key.key_id])).get(key.key_id, KeyUsage())
            before = used = _plus(stored, self._held.get(key.key_id, KeyUsage()))
            answers: list[str | None] = []
            for size in sizes:
                answers.append(refusal(key, used, size))
                if answers[-1] is None:
                    used = _plus(used, KeyUsage(1, size))
            admitted = KeyUsage(used.files - before.files, used.bytes - before.bytes)
            self._held[key.key_id] = _plus(self._held.get(key.key_id, KeyUsage()), admitted)
            return answers, before

    def release(self, key: Principal, held: KeyUsage) -> None:
        """Give back what ``admit`` held (the upload stored it, or failed)."""
        left = self._held.get(key.key_id, KeyUsage())
        left = KeyUsage(left.files - held.files, left.bytes - held.bytes)
        if left.files <= 0:
            # (its lock stays: a waiter may hold it, and a second lock for the key would let two in)
            self._held.pop(key.key_id, None)
        else:
            self._held[key.key_id] = left

    @asynccontextmanager
    async def storing(self, key: Principal, held: KeyUsage) -> AsyncIterator[None]:
        """Mark the held contents stored inside this block: the hold is given back as the block
        ends, under the lock ``admit`` reads under."""
        async with self._lock(key.key_id):
            try:
                yield
            finally:
                self.release(key, held)
