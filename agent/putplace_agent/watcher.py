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
UNDECODABLE_RESTART_SECONDS = 1.0


def _is_undecodable(exc: BaseException) -> bool:
    """watchfiles cannot pass on a path that is not UTF-8: it fails the whole batch of events
    ("Unable to decode path ... to string"), wrapped in an ExceptionGroup by anyio."""
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_undecodable(e) for e in exc.exceptions)
    return "unable to decode path" in str(exc).lower()


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
    on_lost: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Watch ``root`` until ``stop`` is set. ``on_lost`` is called when a batch of events was
    lost (a name that is not UTF-8 changed): a rescan of ``root`` finds what the batch said."""
    WATCH_POLLING.labels(root).set(1 if force_polling else 0)
    # With ignore_permission_denied, watchfiles drops every error of the initial watch, the watch
    # limit included, and then watches part of the tree without a word. So the first try is strict;
    # only when it fails for another reason (an unreadable or vanished directory) is the next lenient.
    lenient = False
    said_undecodable = False
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
            if _is_undecodable(exc):
                await _rescan_after_lost_events(root, exc, stop, on_lost, said=said_undecodable)
                said_undecodable = True
            else:
                await _pause_after_error(root, exc, stop)


async def _rescan_after_lost_events(
    root: str, exc: BaseException, stop: asyncio.Event, on_lost: Callable[[], Awaitable[None]] | None, *, said: bool
) -> None:
    # Such a name may change often (a log): say so once, and watch again soon, for the watch
    # still carries every other change. The rescan runs while the watch restarts, so what
    # changes meanwhile is seen by one or the other.
    ERRORS.labels("watch_undecodable").inc()
    if not said:
        log.warning(
            "watching %s: a file name that is not UTF-8 changed and its events were lost; each such"
            " loss is made good by a rescan of the tree (%s)",
            root,
            exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) else exc,
        )
    try:
        await asyncio.wait_for(stop.wait(), UNDECODABLE_RESTART_SECONDS)
    except TimeoutError:
        if on_lost is not None:
            task = asyncio.get_running_loop().create_task(_guarded(on_lost))
            _rescans.add(task)
            task.add_done_callback(_rescans.discard)


_rescans: set[asyncio.Task[None]] = set()  # strong references to running rescans


async def _guarded(job: Callable[[], Awaitable[None]]) -> None:
    try:
        await job()
    except Exception:  # a bug: the next rescan or loss tries again
        log.exception("rescanning after lost watch events failed")


async def _pause_after_error(root: str, exc: BaseException, stop: asyncio.Event) -> None:
    ERRORS.labels("watch").inc()
    log.warning("watching %s failed (%s); watching again in %.0f s, rescans go on", root, exc, RESTART_SECONDS)
    try:
        await asyncio.wait_for(stop.wait(), RESTART_SECONDS)
    except TimeoutError:
        pass
