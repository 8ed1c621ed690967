"""Per-key rate limits that hold across API replicas sharing one database.

Design: the authoritative bucket for each key lives in the shared store as one GCRA number
(see ``store.base.gcra``). Each process does not ask the store per request: it *leases* a
small batch of tokens (about 100 ms worth of the key's rate, at least one) and spends them
locally, going back to the store only when its lease is spent or a second old. Replicas can
therefore never together exceed the shared bucket; the cost is that up to one lease per
replica may go unused (expire), which bounds the error at about 0.1 s of rate per replica.
A refusal is remembered until the bucket can next grant a token (its ``retry_after``), so a
key far over its limit costs no store call per request; and its 429 is held until then (at
most ``REFUSAL_HOLD_SECONDS``), so a client retrying at once on many connections goes at about
its limit's pace instead of the server's, leaving the event loop to the other keys.
With no rate configured for a key (the default) nothing is checked at all.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from putplace_api.auth import Principal
from putplace_api.store.base import MetadataStore

__all__ = ["Decision", "RateLimiter", "REFUSAL_HOLD_SECONDS"]

LEASE_SECONDS = 0.1
LEASE_TTL = 1.0
REFUSAL_HOLD_SECONDS = 0.5  # a 429 is sent when the key could next be allowed, or after this


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: float
    burst: int
    remaining: int
    retry_after: float = 0.0


@dataclass(slots=True)
class _Lease:
    tokens: int = 0
    expires: float = 0.0
    refused_until: float = 0.0  # monotonic: no token can be had from the store before then
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RateLimiter:
    def __init__(
        self,
        store: MetadataStore,
        default_rate: float | None,
        default_burst: int | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._default_rate = default_rate
        self._default_burst = default_burst
        self._clock = clock  # wall clock: the shared bucket is compared across processes
        self._leases: dict[str, _Lease] = {}

    def policy(self, principal: Principal) -> tuple[float, int] | None:
        rate = principal.rate_limit or self._default_rate
        if rate is None:
            return None
        burst = principal.rate_limit_burst or self._default_burst or max(1, math.ceil(rate))
        return rate, burst

    async def check(self, principal: Principal) -> Decision | None:
        """None when the key is unlimited; otherwise whether this request may proceed."""
        policy = self.policy(principal)
        if policy is None:
            return None
        rate, burst = policy
        lease = self._leases.setdefault(principal.key_id, _Lease())
        if (refused := self._still_refused(lease, rate, burst)) is not None:
            return refused  # before the lock: refusals never queue behind a store call
        async with lease.lock:
            if (refused := self._still_refused(lease, rate, burst)) is not None:
                return refused
            now = self._clock()
            if lease.tokens <= 0 or now >= lease.expires:
                want = max(1, min(burst, round(rate * LEASE_SECONDS)))
                grant = await self._store.take_tokens(f"key:{principal.key_id}", rate, burst, want, now)
                if grant.granted == 0:
                    lease.tokens = 0
                    lease.refused_until = time.monotonic() + grant.retry_after
                    return Decision(False, rate, burst, 0, grant.retry_after)
                lease.tokens, lease.expires = grant.granted, now + LEASE_TTL
            lease.tokens -= 1
            return Decision(True, rate, burst, lease.tokens)

    @staticmethod
    def _still_refused(lease: _Lease, rate: float, burst: int) -> Decision | None:
        # Monotonic, not the shared wall clock: a clock stepped back must not extend a refusal.
        wait = lease.refused_until - time.monotonic()
        return Decision(False, rate, burst, 0, wait) if wait > 0 else None
