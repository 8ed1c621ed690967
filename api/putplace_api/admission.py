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
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import anyio

from putplace_api import metrics
from putplace_api.errors import Overloaded

__all__ = ["Admitted"]

# Uncounted: the health probe and the lifecycle (above), and the webhook events a request queues
# once its own work is done -- refusing them then would lose the events, not shed the request.
_UNCOUNTED = frozenset({"open", "close", "ping", "list_subscriptions", "enqueue_deliveries"})


class Admitted:
    """``inner``'s coroutine methods, at most ``limit`` of them running at once (0 = no cap)."""

    def __init__(self, inner: Any, backend: str, limit: int) -> None:
        self._inner = inner
        self._backend = backend
        self._limit = limit
        self.limiter = anyio.CapacityLimiter(limit) if limit else None

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
            try:
                limiter.acquire_on_behalf_of_nowait(token)
            except anyio.WouldBlock:
                metrics.SHED.labels(self._backend, name).inc()
                raise Overloaded(self._backend, self._limit) from None
            try:
                return await attr(*args, **kwargs)
            finally:
                limiter.release_on_behalf_of(token)

        return admitted
