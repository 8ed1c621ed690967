"""The periodic pass over every PutPlaceInstance, ApiKey and WebhookSubscription, started and
stopped by ``handlers.py``.

It replaces kopf timers, which put a finalizer on every object they run for: with them, an
instance deleted while the operator is gone (or losing its permissions, as during
``helm uninstall``) would stay stuck. Every ``progress_seconds`` the pass lists every kind;
an object whose last full reconcile is ``reconcile_seconds`` old is reconciled again (drift
repair, a rotated-out key revoked once its grace period is over, a failed one tried again),
and an instance on its way to Ready has its status refreshed in between.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from putplace_operator.kube import KubeError
from putplace_operator.manifests.common import GROUP, VERSION
from putplace_operator.reconcile import (
    SETTINGS,
    forget,
    kube,
    last_full,
    progressing,
    reconcile_apikey,
    reconcile_instance,
    reconcile_webhook,
)

__all__ = ["resync_forever"]

log = logging.getLogger(__name__)
CONCURRENCY = 8  # objects reconciled at once by one pass


def _watched(namespace: str, patterns: list[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(namespace, p) for p in patterns)


async def _instance(body: Mapping[str, Any], due: bool) -> dict[str, Any] | None:
    if due or progressing(body):
        return await reconcile_instance(body, apply=due)
    return None


async def _apikey(body: Mapping[str, Any], due: bool) -> dict[str, Any] | None:
    return (await reconcile_apikey(body))[0] if due else None


async def _webhook(body: Mapping[str, Any], due: bool) -> dict[str, Any] | None:
    return (await reconcile_webhook(body))[0] if due else None


PASSES: dict[str, Callable[[Mapping[str, Any], bool], Awaitable[dict[str, Any] | None]]] = {
    "PutPlaceInstance": _instance,
    "ApiKey": _apikey,
    "WebhookSubscription": _webhook,
}


async def resync_once(namespaces: list[str]) -> None:
    now = time.monotonic()
    limit = asyncio.Semaphore(CONCURRENCY)
    seen: set[str] = set()

    async def one(kind: str, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        # An object not seen before is kopf's to reconcile first (create or resume handler).
        due = now - last_full.setdefault(meta["uid"], now) >= SETTINGS.reconcile_seconds
        async with limit:
            status = await PASSES[kind](body, due)
            if status is not None:
                await kube().patch_status(f"{GROUP}/{VERSION}", kind, meta["name"], meta["namespace"], status)

    for kind in PASSES:
        bodies = [
            b for b in await kube().list(f"{GROUP}/{VERSION}", kind)
            if _watched(b["metadata"]["namespace"], namespaces) and not b["metadata"].get("deletionTimestamp")
        ]  # fmt: skip
        seen.update(b["metadata"]["uid"] for b in bodies)
        results = await asyncio.gather(*(one(kind, b) for b in bodies), return_exceptions=True)
        for body, result in zip(bodies, results, strict=True):
            if isinstance(result, KubeError):  # e.g. the object went away meanwhile
                log.info("periodic reconcile of %s %s: %s", kind, body["metadata"]["name"], result)
            elif isinstance(result, BaseException):
                raise result
    for uid in set(last_full) - seen:
        forget(uid)


async def resync_forever(namespaces: list[str], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await resync_once(namespaces)
        except KubeError as exc:
            log.warning("periodic reconcile: %s", exc)
        try:
            await asyncio.wait_for(stop.wait(), SETTINGS.progress_seconds)
        except TimeoutError:
            pass
