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
RESCAN_GAP_SECONDS = 5.0  # between rescans that make good events lost to undecodable names


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
    rescans = _Rescans(on_lost)
    try:
        await _watch(root, on_changes, stop, force_polling, rescans)
    finally:
        rescans.cancel()


async def _watch(
    root: str,
    on_changes: Callable[[set[str], float], Awaitable[None]],
    stop: asyncio.Event,
    force_polling: bool,
    rescans: _Rescans,
) -> None:
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
            if _is_undecodable(exc):
                await _after_lost_events(root, exc, stop, rescans)
            elif not force_polling and _is_watch_limit(exc):
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
                await _after_lost_events(root, exc, stop, rescans)
            else:
                await _pause_after_error(root, exc, stop)


async def _after_lost_events(root: str, exc: BaseException, stop: asyncio.Event, rescans: _Rescans) -> None:
    # Such a name may change often (a log): say so once, and watch again soon, for the watch
    # still carries every other change. The rescan runs while the watch restarts, so what
    # changes meanwhile is seen by one or the other.
    ERRORS.labels("watch_undecodable").inc()
    if not rescans.said:
        rescans.said = True
        cause = exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) else exc
        log.warning(
            "watching %s: a file name that is not UTF-8 changed and its events were lost; each such"
            " loss is made good by a rescan of the tree, at most every %.0f s (%s)",
            root,
            RESCAN_GAP_SECONDS,
            cause,
        )
    try:
        await asyncio.wait_for(stop.wait(), UNDECODABLE_RESTART_SECONDS)
    except TimeoutError:
        rescans.request()


class _Rescans:
    """Rescans asked for by lost events: one at a time and ``RESCAN_GAP_SECONDS`` apart (a name
    that changes all the time must not keep a large tree's rescan running); a request made
    meanwhile is served by the next one, never dropped."""

    def __init__(self, job: Callable[[], Awaitable[None]] | None) -> None:
        self.job = job
        self.said = False
        self._wanted = False
        self._task: asyncio.Task[None] | None = None

    def request(self) -> None:
        if self.job is None:
            return
        self._wanted = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(self.job))

    async def _run(self, job: Callable[[], Awaitable[None]]) -> None:
        while self._wanted:
            self._wanted = False
            try:
                await job()
            except Exception:  # a bug: the next request tries again
                log.exception("rescanning after lost watch events failed")
            await asyncio.sleep(RESCAN_GAP_SECONDS)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def _pause_after_error(root: str, exc: BaseException, stop: asyncio.Event) -> None:
    ERRORS.labels("watch").inc()
    log.warning("watching %s failed (%s); watching again in %.0f s, rescans go on", root, exc, RESTART_SECONDS)
    try:
        await asyncio.wait_for(stop.wait(), RESTART_SECONDS)
    except TimeoutError:
        pass
