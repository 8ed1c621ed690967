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
RESTART_SECONDS = 10.0  # after an unexpected watch error


def _is_watch_limit(exc: Exception) -> bool:
    # watchfiles reports inotify's watch limit (ENOSPC) as OSError("OS file watch limit reached. ...")
    # without an errno, and its instance limit (EMFILE) as a RuntimeError "... (os error 24)".
    text = str(exc).lower()
    said = any(words in text for words in ("watch limit", "(os error 28)", "(os error 24)"))
    return said or getattr(exc, "errno", None) in (28, 24)


async def watch_tree(
    root: str,
    on_changes: Callable[[set[str], float], Awaitable[None]],
    stop: asyncio.Event,
    *,
    force_polling: bool = False,
) -> None:
    """Watch ``root`` until ``stop`` is set."""
    WATCH_POLLING.labels(root).set(1 if force_polling else 0)
    # With ignore_permission_denied, watchfiles drops every error of the initial watch, the watch
    # limit included, and then watches part of the tree without a word. So the first try is strict;
    # only when it fails for another reason (an unreadable or vanished directory) is the next lenient.
    lenient = False
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
                ignore_permission_denied=lenient,
            ):
                await on_changes({path for _, path in changes}, time.monotonic())
            return
        except (OSError, RuntimeError) as exc:  # watchfiles' own errors are RuntimeErrors
            if not force_polling and _is_watch_limit(exc):
                log.warning(
                    "the OS watch limit is reached watching %s; polling it every %.1f s instead. Raise"
                    " fs.inotify.max_user_watches (or max_user_instances) on the node to get events again",
                    root,
                    POLL_DELAY_MS / 1000,
                )
                ERRORS.labels("watch_limit").inc()
                force_polling = True
                WATCH_POLLING.labels(root).set(1)
            elif isinstance(exc, PermissionError | FileNotFoundError) and not lenient:
                log.warning("cannot watch all of %s (%s); changes there are found by rescans only", root, exc)
                lenient = True
            else:
                await _pause_after_error(root, exc, stop)
        except Exception as exc:  # e.g. an ExceptionGroup from a polled tree: never fatal to the agent
            await _pause_after_error(root, exc, stop)


async def _pause_after_error(root: str, exc: BaseException, stop: asyncio.Event) -> None:
    ERRORS.labels("watch").inc()
    log.warning("watching %s failed (%s); watching again in %.0f s, rescans go on", root, exc, RESTART_SECONDS)
    try:
        await asyncio.wait_for(stop.wait(), RESTART_SECONDS)
    except TimeoutError:
        pass
