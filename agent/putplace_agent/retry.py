"""When and how the agent retries a request (tenacity): connection errors, 5xx and 429, with
exponential backoff and full jitter, never sooner than the server's ``Retry-After``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay, wait_random_exponential

from putplace_client import RateLimited, ServerUnavailable, StatusError, TransportError

__all__ = ["is_transient", "call_with_retry"]

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BACKOFF_SECONDS = 15.0
_backoff = wait_random_exponential(multiplier=0.25, max=MAX_BACKOFF_SECONDS)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TransportError | RateLimited | ServerUnavailable):
        return True
    return isinstance(exc, StatusError) and exc.status_code >= 500


def _wait(state: RetryCallState) -> float:
    delay = _backoff(state)
    exc = state.outcome.exception() if state.outcome else None
    retry_after = getattr(exc, "retry_after", None)
    return max(delay, retry_after) if retry_after else delay


def _log(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    # Once per outage step, not per attempt: the first retry and then every 10th.
    if state.attempt_number == 1 or state.attempt_number % 10 == 0:
        log.warning("retrying: %s (attempt %d)", exc, state.attempt_number)


async def call_with_retry(retry_for: float, fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn`` until it succeeds, fails for good, or ``retry_for`` seconds have passed."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=_wait,
        stop=stop_after_delay(retry_for),
        before_sleep=_log,
        reraise=True,
    ):
        with attempt:
            return await fn()
    raise AssertionError("unreachable")  # AsyncRetrying either returns or raises
