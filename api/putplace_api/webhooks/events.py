"""From what a request did to queued deliveries.

A request that causes events writes them to the delivery queue before its response goes out,
in one store call per request, so that a process killed right after answering loses nothing
(at least once). Only subscriptions that want an event get a delivery; the subscription list
is cached for ``webhook_cache_seconds``, so with no subscription an event costs no database
call at all. Queuing never fails the request: a failure is logged and counted
(``putplace_webhook_enqueue_failures_total``) -- the request's own work is done by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter

from putplace_api.settings import Settings
from putplace_api.store.base import DeliveryRow, PutResult, SubscriptionRow, WebhookStore
from putplace_client.models import BatchUploadItem, UploadStatus, WebhookEvent

__all__ = ["Event", "Webhooks", "enqueue", "corruption_found", "delivery_id", "ENQUEUE_FAILURES"]

log = logging.getLogger("putplace.webhooks")

ENQUEUE_FAILURES = Counter("putplace_webhook_enqueue_failures_total", "Webhook events that could not be queued")


@dataclass(frozen=True, slots=True)
class Event:
    type: WebhookEvent
    data: Mapping[str, Any]


_counter = itertools.count()
_last_micros = 0
_PROCESS = os.getpid() & 0xFFFF


def delivery_id() -> str:
    """24 hex digits that sort by creation time to the microsecond across processes (then by
    process and a counter): the delivery order. ObjectIds sort by the second only, which
    would let two replicas' events of one second come out in either order."""
    global _last_micros
    _last_micros = max(_last_micros + 1, time.time_ns() // 1000)  # strictly increasing here
    return f"{_last_micros:014x}{_PROCESS:04x}{next(_counter) & 0xFFFFFF:06x}"


def _deliveries(subscriptions: Iterable[SubscriptionRow], events: Sequence[Event], now: datetime) -> list[DeliveryRow]:
    rows = []
    for sub in subscriptions:
        if not sub.active:
            continue
        for event in events:
            if event.type.value in sub.events:
                ident = delivery_id()
                body = json.dumps(
                    {"id": ident, "event": event.type.value, "occurred_at": now.isoformat(), "data": event.data},
                    separators=(",", ":"),
                    ensure_ascii=False,
                )
                rows.append(DeliveryRow(ident, sub.id, event.type.value, body, now, now))
    return rows


async def enqueue(
    store: WebhookStore, events: Sequence[Event], subscriptions: Sequence[SubscriptionRow] | None = None
) -> int:
    """Queue ``events`` for every subscription that wants them (read from the store unless
    given); how many deliveries were queued. For callers without an app (``verify``)."""
    if not events:
        return 0
    subs = await store.list_subscriptions() if subscriptions is None else subscriptions
    rows = _deliveries(subs, events, datetime.now(UTC))
    await store.enqueue_deliveries(rows)
    return len(rows)


def _file_data(result: PutResult) -> dict[str, Any]:
    meta = result.file.meta
    return {
        "id": result.file.id,
        "hostname": meta.hostname,
        "filepath": meta.filepath,
        "filepath_escaped": meta.filepath_escaped,
        "sha256": meta.sha256,
        "file_size": meta.file_size,
    }


async def corruption_found(store: WebhookStore, problems: Iterable[tuple[str, str]]) -> None:
    """``content.corrupt`` for each (sha256, reason) that ``verify`` found; never raises."""
    events = [Event(WebhookEvent.CONTENT_CORRUPT, {"sha256": sha, "reason": reason}) for sha, reason in problems]
    try:
        await enqueue(store, events)
    except Exception as exc:
        ENQUEUE_FAILURES.inc(len(events))
        log.error("could not queue %d webhook event(s): %s", len(events), exc)


class Webhooks:
    """What the app holds: the cached subscription list, the events API the routes call, and
    the delivery worker (started and stopped by the lifespan)."""

    def __init__(self, store: WebhookStore, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._subscriptions: list[SubscriptionRow] = []
        self._loaded_at: float | None = None
        self._loading = asyncio.Lock()
        self.queued = asyncio.Event()  # wakes this process's worker: something was just queued
        self._worker: asyncio.Task[None] | None = None

    # -- the subscription cache ------------------------------------------------------------
    def forget_subscriptions(self) -> None:
        """Re-read the list at the next event (this process changed it)."""
        self._loaded_at = None

    async def _wanting(self, types: set[WebhookEvent]) -> list[SubscriptionRow]:
        fresh = self._settings.webhook_cache_seconds
        if self._loaded_at is None or time.monotonic() - self._loaded_at > fresh:
            async with self._loading:  # one read serves every request waiting for it
                if self._loaded_at is None or time.monotonic() - self._loaded_at > fresh:
                    self._subscriptions = await self._store.list_subscriptions()
                    self._loaded_at = time.monotonic()
        return [s for s in self._subscriptions if s.active and any(t.value in s.events for t in types)]

    async def emit(self, events: Sequence[Event]) -> None:
        """Queue the events of one request; never raises."""
        if not events:
            return
        try:
            subs = await self._wanting({e.type for e in events})
            if subs:
                await enqueue(self._store, events, subs)
                self.queued.set()
        except Exception as exc:
            ENQUEUE_FAILURES.inc(len(events))
            log.error("could not queue %d webhook event(s): %s", len(events), exc)

    # -- what the routes call (one line each) ------------------------------------------------
    async def announced(self, results: Sequence[PutResult], now: datetime) -> None:
        """``file.duplicate`` for each record written now whose content is stored already
        (an unchanged re-announcement writes nothing, and tells nobody)."""
        since = now.replace(microsecond=now.microsecond // 1000 * 1000)  # the store may keep ms only
        await self.emit(
            [
                Event(WebhookEvent.FILE_DUPLICATE, _file_data(r))
                for r in results
                if r.content.stored and r.file.updated_at >= since
            ]
        )

    async def deleted(self, hostname: str, filepath: str, filepath_escaped: bool) -> None:
        data = {"hostname": hostname, "filepath": filepath, "filepath_escaped": filepath_escaped}
        await self.emit([Event(WebhookEvent.FILE_DELETED, data)])

    async def uploaded(
        self, sha256: str, size: int, mime_type: str | None, hostname: str | None, filepath: str | None
    ) -> None:
        data = {"sha256": sha256, "size": size, "mime_type": mime_type, "hostname": hostname, "filepath": filepath}
        await self.emit([Event(WebhookEvent.FILE_UPLOADED, data)])

    async def mismatch(self, sha256: str, hostname: str | None, filepath: str | None) -> None:
        data = {"sha256": sha256, "hostname": hostname, "filepath": filepath}
        await self.emit([Event(WebhookEvent.UPLOAD_MISMATCH, data)])

    async def batch_uploaded(self, items: Sequence[BatchUploadItem]) -> None:
        events = []
        for item in {i.sha256: i for i in items}.values():  # a repeated part is one event
            if item.status == UploadStatus.UPLOADED:
                data = {"sha256": item.sha256, "size": item.size, "mime_type": None, "hostname": None, "filepath": None}
                events.append(Event(WebhookEvent.FILE_UPLOADED, data))
            elif item.status == UploadStatus.MISMATCH:
                data = {"sha256": item.sha256, "hostname": None, "filepath": None}
                events.append(Event(WebhookEvent.UPLOAD_MISMATCH, data))
        await self.emit(events)

    # -- the worker ------------------------------------------------------------------------
    async def start(self) -> None:
        from putplace_api.webhooks.worker import DeliveryWorker

        self._worker = asyncio.create_task(DeliveryWorker(self._store, self._settings, self.queued).run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
