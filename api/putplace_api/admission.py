"""A cap on the database operations one API process runs at once, refused at once when reached.

Past its capacity a database answers ever more slowly: calls queue past their timeout while the
server keeps working on the queries their callers abandoned, and the API stalls until the load
drops (FerretDB did, under ``bench/soak.py``). With a cap the database's queue stays short and
the excess is shed in the API: a call beyond the cap raises ``Overloaded`` (503 + Retry-After)
before it starts, so a refused request has changed nothing that the request itself did not
already finish (a client retries it whole).

``build_state`` wraps the metadata store in ``Admitted``, so both backends get the cap. The
health probe (``ping``) and the lifecycle calls pass uncounted: ``/readyz`` must keep saying
whether the database answers, not whether this process is busy.

A request that arrives while the cap is full is refused by ``SecurityMiddleware`` before its
key is even looked up (``Admitted.full``): a refusal then costs no database call and no work of
the route, so the clients' retries do not eat the capacity the backlog needs.

A request is admitted or refused at its *first* database call; once one has run, its later
calls wait for a slot instead of being refused, and go before any newcomer's (``request_scope()``
marks the request). Refusing them would throw away work already done: an upload refused at
``mark_stored`` has received, hashed and written its whole body, which its client then sends
again, so under a backlog of retries the capacity went to work that was thrown away. The wait
stays short: newcomers are refused while anyone waits (``full``), so the slots go to the
requests in progress.

Retry-After grows with the pressure (``RetryAfter``): successive refusals get integers spread
evenly over ``retry_after_seconds``..``upper``, where ``upper`` grows with the refusals of
the last ``PRESSURE_SECONDS`` per slot of the cap, up to ``retry_after_max_seconds``. The
retries of a burst of refusals then come back spread over that range instead of together.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import anyio

from putplace_api import metrics
from putplace_api.errors import Overloaded

__all__ = ["Admitted", "RetryAfter", "PRESSURE_SECONDS", "request_scope"]

# Uncounted: the health probe and the lifecycle (above), and the webhook events a request queues
# once its own work is done -- refusing them then would lose the events, not shed the request.
_UNCOUNTED = frozenset({"open", "close", "ping", "list_subscriptions", "enqueue_deliveries"})


class _Request:
    """One request's admission: whether one of its database calls has been let through."""

    __slots__ = ("admitted",)

    def __init__(self) -> None:
        self.admitted = False


# An object, not a flag: tasks a request starts copy its context, and must see it admitted
# whichever of them made the first call.
_REQUEST: ContextVar[_Request | None] = ContextVar("putplace_request_admission", default=None)


@contextmanager
def request_scope() -> Iterator[None]:
    """Mark the database calls made inside as one request's (``SecurityMiddleware``). Calls
    outside any request -- the background tasks -- are each admitted or refused on their own."""
    token = _REQUEST.set(_Request())
    try:
        yield
    finally:
        _REQUEST.reset(token)


PRESSURE_SECONDS = 10.0  # how long a refusal keeps counting towards Retry-After (exponential decay)
_GOLDEN = (5**0.5 - 1) / 2


class RetryAfter:
    """The Retry-After of successive refusals: spread evenly over ``base``..``upper``, ``upper`` growing
    with the recent refusals per slot of the cap (``base * (1 + rate / limit)`` rounded down, at most
    ``ceiling``).

    Why per slot: the cap is the process's concurrency, so refusals per second per slot say how
    many times over its capacity the clients come back; their retries are spread over as many
    times the base wait. The refusals are counted with exponential decay (time constant
    ``PRESSURE_SECONDS``), so ``upper`` falls back to ``base`` within tens of seconds of the
    load dropping. ``clock`` is there for the tests."""

    def __init__(self, base: int, ceiling: int, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.base = base
        self.ceiling = max(base, ceiling)
        self._limit = max(1, limit)
        self._clock = clock
        self._weight = 0.0  # refusals, decayed to the time of the last one
        self._at = clock()
        self._turn = 0

    def upper(self) -> int:
        """The longest Retry-After given now."""
        rate = self._decayed(self._clock()) / PRESSURE_SECONDS
        return min(self.ceiling, math.floor(self.base * (1 + rate / self._limit)))

    def refused(self) -> int:
        """Count one refusal; return its Retry-After (whole seconds, as HTTP has it)."""
        now = self._clock()
        self._weight = self._decayed(now) + 1
        self._at = now
        upper = self.upper()
        # The golden-ratio sequence: successive refusals land evenly over base..upper whatever
        # its width, and as it changes (a counter modulo the width would bunch then).
        self._turn += 1
        return self.base + int((self._turn * _GOLDEN) % 1.0 * (upper - self.base + 1))

    def _decayed(self, now: float) -> float:
        return self._weight * math.exp(-(now - self._at) / PRESSURE_SECONDS)


class Admitted:
    """``inner``'s coroutine methods, at most ``limit`` of them running at once (0 = no cap)."""

    def __init__(self, inner: Any, backend: str, limit: int, retry_after: RetryAfter) -> None:
        self._inner = inner
        self._backend = backend
        self._limit = limit
        self.limiter = anyio.CapacityLimiter(limit) if limit else None
        self.retry_after = retry_after
        self.waiting = 0  # admitted requests' calls waiting for a slot

    def full(self) -> bool:
        """Whether a new request's database call made now would be refused: every slot of the cap
        is taken, or admitted requests wait for one."""
        limiter = self.limiter
        return limiter is not None and (self.waiting > 0 or limiter.borrowed_tokens >= limiter.total_tokens)

    def refuse(self, operation: str) -> Overloaded:
        """The refusal of ``operation`` (a store method, or the route of a request refused on
        arrival), counted in ``putplace_shed_total`` and in the pressure."""
        metrics.SHED.labels(self._backend, operation).inc()
        return Overloaded(self._backend, self._limit, self.retry_after.refused())

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        limiter = self.limiter
        if limiter is None or name in _UNCOUNTED or not inspect.iscoroutinefunction(attr):
            return attr
        wrapped = self._wrap(name, attr, limiter)
        # Kept: __getattr__ is only called for names not found, so the wrapper is built once
        # per method, not on every call (functools.wraps each time cost ~3 % of a put_file).
        setattr(self, name, wrapped)
        return wrapped

    def _wrap(self, name: str, attr: Any, limiter: anyio.CapacityLimiter) -> Any:

        @functools.wraps(attr)
        async def admitted(*args: Any, **kwargs: Any) -> Any:
            # A token of its own per call: the limiter then counts calls, not tasks (one task
            # may make several calls, and a shared lookup runs in a task of its own).
            token = object()
            request = _REQUEST.get()
            try:
                limiter.acquire_on_behalf_of_nowait(token)
            except anyio.WouldBlock:
                if request is None or not request.admitted:
                    raise self.refuse(name) from None
                # Already admitted: the limiter hands a freed slot to the longest waiter, and
                # refuses newcomers while anyone waits, so the requests in progress finish first.
                self.waiting += 1
                try:
                    await limiter.acquire_on_behalf_of(token)
                finally:
                    self.waiting -= 1
            if request is not None:
                request.admitted = True
            try:
                return await attr(*args, **kwargs)
            finally:
                limiter.release_on_behalf_of(token)

        return admitted
