"""What the running app holds: settings, the two backends, authentication, rate limits, quota holds.

Backends are wrapped in ``_Timed`` so every database and storage call is measured in one
place (``putplace_backend_operation_duration_seconds``) without touching the backends; the
metadata store also in ``Admitted`` (outermost, so a refused call is not timed), its cap.
"""

from __future__ import annotations

import functools
import inspect
import time
from dataclasses import dataclass
from typing import Any, cast

from putplace_api import metrics
from putplace_api.admission import Admitted, RetryAfter
from putplace_api.auth import Authenticator
from putplace_api.errors import BackendUnavailable
from putplace_api.quotas import Quotas
from putplace_api.ratelimit import RateLimiter
from putplace_api.sessions import Sessions
from putplace_api.settings import Settings
from putplace_api.storage import ContentStorage, open_storage
from putplace_api.store import MetadataStore, open_store
from putplace_api.store.base import WebhookStore
from putplace_api.webhooks import Webhooks

__all__ = ["AppState", "build_state"]


class _Timed:
    def __init__(self, inner: Any, backend: str) -> None:
        self._inner = inner
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        wrapped = self._wrap(name, attr)
        setattr(self, name, wrapped)  # built once per method (see Admitted.__getattr__)
        return wrapped

    def _wrap(self, name: str, attr: Any) -> Any:
        @functools.wraps(attr)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            outcome = "ok"
            try:
                return await attr(*args, **kwargs)
            except BackendUnavailable:
                outcome = "unavailable"
                raise
            except BaseException:
                outcome = "error"
                raise
            finally:
                metrics.BACKEND_SECONDS.labels(self._backend, name, outcome).observe(time.perf_counter() - started)

        return timed


@dataclass(slots=True)
class AppState:
    settings: Settings
    store: MetadataStore
    admission: Admitted  # the same object as ``store``: its cap, for requests refused on arrival
    storage: ContentStorage
    auth: Authenticator
    limiter: RateLimiter
    webhooks: Webhooks
    sessions: Sessions
    quotas: Quotas


def build_state(settings: Settings) -> AppState:
    timed = _Timed(open_store(settings), "database")
    limit = settings.database_max_concurrency
    retry_after = RetryAfter(settings.retry_after_seconds, settings.retry_after_max_seconds, limit)
    admission = Admitted(timed, "database", limit, retry_after)
    store = cast(MetadataStore, admission)
    storage = cast(ContentStorage, _Timed(open_storage(settings), "storage"))
    quotas = Quotas()
    return AppState(
        settings=settings,
        store=store,
        admission=admission,
        storage=storage,
        auth=Authenticator(store),
        limiter=RateLimiter(store, settings.rate_limit, settings.rate_limit_burst),
        webhooks=Webhooks(cast(WebhookStore, store), settings),
        sessions=Sessions(store, storage, settings, quotas),
        quotas=quotas,
    )
