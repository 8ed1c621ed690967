"""The delivery worker: one asyncio task in every API process (started by the lifespan).

Each pass reads the subscriptions and, for each whose oldest pending delivery is due, takes the
subscription's lease (one holder across every process and replica), then sends its deliveries
oldest first until one fails or none is due. So deliveries of one subscription go out one at a
time, in the order they were queued: what gives per-file ordering, at the price of head-of-line
blocking (a receiver that fails holds back that subscription's later events until the failing
one is delivered or dead). Other subscriptions go on meanwhile.

A delivery is a POST of the stored JSON body; any 2xx answer delivers it. Anything else (an
error status, a timeout, a refused connection) counts an attempt and schedules the next one
after ``min(webhook_backoff_max_seconds, webhook_backoff_seconds * 2 ** (attempts - 1))``,
jittered down by up to half; after ``webhook_max_attempts`` attempts it is a dead letter,
kept until an admin replays it (``POST /webhooks/dead_letters/replay``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from prometheus_client import Counter, Gauge

from putplace_api import __version__
from putplace_api.errors import log_background_failure
from putplace_api.settings import Settings
from putplace_api.store.base import (
    DELIVERY_DEAD,
    DELIVERY_PENDING,
    DeliveryRow,
    SubscriptionRow,
    WebhookStore,
    delivery_lease,
)
from putplace_api.webhooks.signing import sign

__all__ = ["DeliveryWorker", "backoff_seconds", "DELIVERIES", "QUEUED"]

log = logging.getLogger("putplace.webhooks")

DELIVERIES = Counter(
    "putplace_webhook_deliveries_total", "Webhook delivery attempts by outcome", ["event", "outcome"]
)  # outcome: delivered | retry | dead
QUEUED = Gauge(
    "putplace_webhook_queue_depth", "Webhook deliveries in the queue", ["status"], multiprocess_mode="livemostrecent"
)  # status: pending | dead

_CONCURRENT = 16  # subscriptions served side by side
_GAUGE_EVERY = 15.0  # seconds between two readings of the queue depth (a count on the database)
_ERROR_CHARS = 300


def backoff_seconds(attempts: int, base: float, cap: float) -> float:
    """The wait after the ``attempts``-th failed attempt (documented in the module docstring)."""
    delay = min(cap, base * 2.0 ** min(attempts - 1, 62))
    return delay * random.uniform(0.5, 1.0)


class DeliveryWorker:
    def __init__(self, store: WebhookStore, settings: Settings, wake: asyncio.Event) -> None:
        self._store = store
        self._settings = settings
        self._wake = wake
        self._holder = uuid.uuid4().hex  # this process, in the lease table
        # A lease outlives any one attempt by far: a holder that dies is replaced after it.
        self._lease = timedelta(seconds=2 * settings.webhook_timeout_seconds + 5)
        self._limit = asyncio.Semaphore(_CONCURRENT)
        self._gauge_at = 0.0

    async def run(self) -> None:
        async with httpx.AsyncClient(
            timeout=self._settings.webhook_timeout_seconds,
            follow_redirects=False,  # a redirect could carry the signed body somewhere unsubscribed
            headers={"User-Agent": f"PutPlace-Webhooks/{__version__}"},
        ) as client:
            while True:
                try:
                    await self.pass_once(client)
                except Exception as exc:  # a database outage must not end deliveries for good
                    log_background_failure(log, "webhook delivery pass failed", exc)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._settings.webhook_poll_seconds)

    async def pass_once(self, client: httpx.AsyncClient) -> None:
        listed = datetime.now(UTC)
        subs = await self._store.list_subscriptions()
        await asyncio.gather(*(self._serve(client, s) for s in subs if s.active))
        if time.monotonic() - self._gauge_at > _GAUGE_EVERY:
            # Deliveries another replica queued from its cached list after a subscription was
            # deleted. Only those queued well before the list was read: a subscription made since
            # (not in it) has none that old; the minute covers clock skew between replicas.
            cutoff = listed - timedelta(seconds=self._settings.webhook_cache_seconds + 60)
            await self._store.purge_deliveries({s.id for s in subs}, cutoff)
            counts = await self._store.delivery_counts()
            for status in (DELIVERY_PENDING, DELIVERY_DEAD):
                QUEUED.labels(status).set(counts.get(status, 0))
            self._gauge_at = time.monotonic()

    async def _serve(self, client: httpx.AsyncClient, sub: SubscriptionRow) -> None:
        async with self._limit:
            try:
                head = await self._store.delivery_head(sub.id)
                if head is None or head.next_attempt_at > datetime.now(UTC):
                    return  # nothing due: no lease taken, no write
                now = datetime.now(UTC)
                until = now + self._lease
                if not await self._store.take_lease(delivery_lease(sub.id), self._holder, now, until):
                    return  # another process serves it
                try:
                    await self._drain(client, sub, until)
                finally:
                    await self._store.release_lease(delivery_lease(sub.id), self._holder)
            except Exception as exc:  # a lease not released runs out
                log_background_failure(log, f"webhook subscription {sub.id}", exc)

    async def _drain(self, client: httpx.AsyncClient, sub: SubscriptionRow, until: datetime) -> None:
        timeout = timedelta(seconds=self._settings.webhook_timeout_seconds)
        while True:
            now = datetime.now(UTC)
            if now + timeout > until:
                return  # the next pass takes a fresh lease
            # Read again under the lease: the head may have been sent by the previous holder.
            head = await self._store.delivery_head(sub.id)
            if head is None or head.next_attempt_at > now:
                return
            if not await self._send(client, sub, head):
                return

    async def _send(self, client: httpx.AsyncClient, sub: SubscriptionRow, delivery: DeliveryRow) -> bool:
        body = delivery.body.encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-PutPlace-Event": delivery.event,
            "X-PutPlace-Delivery": delivery.id,
            "X-PutPlace-Timestamp": timestamp,
            "X-PutPlace-Signature": sign(sub.secret, timestamp, body),
        }
        try:
            response = await client.post(sub.url, content=body, headers=headers)
            if 200 <= response.status_code < 300:
                await self._store.delivery_done(delivery.id)
                DELIVERIES.labels(delivery.event, "delivered").inc()
                return True
            error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
        attempts = delivery.attempts + 1
        dead = attempts >= self._settings.webhook_max_attempts
        wait = backoff_seconds(
            attempts, self._settings.webhook_backoff_seconds, self._settings.webhook_backoff_max_seconds
        )
        await self._store.delivery_failed(
            delivery.id, attempts, datetime.now(UTC) + timedelta(seconds=wait), error, dead
        )
        DELIVERIES.labels(delivery.event, "dead" if dead else "retry").inc()
        if dead:
            log.warning(
                "webhook delivery %s to subscription %s is a dead letter after %d attempts: %s",
                delivery.id, sub.id, attempts, error,
            )  # fmt: skip
        return dead  # a dead letter no longer holds the queue back
