"""Watching a tree with watchfiles, falling back to polling when the OS watch limit is reached.

Each batch of changed paths goes to a callback (the agent checks each path against its index);
what happened to a path is read from disk then, not from the event, so a burst of events about
one file costs one check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from watchfiles import awatch

from putplace_agent.metrics import ERRORS, WATCH_POLLING

__all__ = ["watch_tree"]

log = logging.getLogger(__name__)

# Group events for at most this long: a file written in many small steps becomes one check,
# and a change still reaches the catalogue well within 2 s.
DEBOUNCE_MS = 200
STEP_MS = 50
POLL_DELAY_MS = 2000  # a polled tree is walked whole each time: keep it cheap


def _is_watch_limit(exc: OSError) -> bool:
    return "watch limit" in str(exc).lower() or exc.errno in (28, 24)  # ENOSPC, EMFILE from inotify


async def watch_tree(
    root: str,
    on_changes: Callable[[set[str], float], Awaitable[None]],
    stop: asyncio.Event,
    *,
    force_polling: bool = False,
) -> None:
    """Watch ``root`` until ``stop`` is set."""
    WATCH_POLLING.labels(root).set(1 if force_polling else 0)
    while not stop.is_set():
        try:
            async for changes in awatch(
                root,
                watch_filter=None,
                stop_event=stop,
                debounce=DEBOUNCE_MS,
                step=STEP_MS,
                force_polling=force_polling,
                poll_delay_ms=POLL_DELAY_MS,
                ignore_permission_denied=True,
            ):
                await on_changes({path for _, path in changes}, time.monotonic())
            return
        except OSError as exc:
            if force_polling or not _is_watch_limit(exc):
                raise
            log.warning(
                "the OS watch limit is reached watching %s; polling it every %.1f s instead."
                " Raise fs.inotify.max_user_watches on the node to get events again",
                root,
                POLL_DELAY_MS / 1000,
            )
            ERRORS.labels("watch_limit").inc()
            force_polling = True
            WATCH_POLLING.labels(root).set(1)
