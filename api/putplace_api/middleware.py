"""Pure ASGI middleware, outermost first:

``ObservabilityMiddleware`` gives every request an id (``X-Request-ID`` honoured and
returned), one JSON access-log line and the request metrics.
``SecurityMiddleware`` denies by default: every path except the public ones needs a valid
key, checked *before* the body is read (so a missing key is a 401, not a 422), then the
key's rate limit, then a cap on JSON body size. Routes only check scopes. Before all that, a
request arriving while the process runs its cap of database operations is refused (503) at
once, whatever its key; past that, the request's database calls are admitted or refused as one
(``admission.py``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi.routing import iter_route_contexts
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from putplace_api import metrics
from putplace_api.admission import request_scope
from putplace_api.errors import (
    BackendUnavailable,
    Overloaded,
    PayloadTooLarge,
    PutPlaceError,
    TooManyRequests,
    error_response,
)
from putplace_api.ratelimit import REFUSAL_HOLD_SECONDS
from putplace_api.tracing import redact_request_span
from putplace_common.logs import request_id

if TYPE_CHECKING:
    from putplace_api.state import AppState

__all__ = ["ObservabilityMiddleware", "SecurityMiddleware", "PUBLIC_PATHS", "PUBLIC_PREFIXES", "PRINCIPAL"]

log = logging.getLogger("putplace.access")

PUBLIC_PATHS = frozenset(
    {"/", "/health", "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
# The web console's pages and static files hold no data: its script calls the API with a key.
PUBLIC_PREFIXES = ("/ui/",)
PRINCIPAL = "putplace.principal"  # scope key where SecurityMiddleware leaves the Principal
_STREAMED_PREFIXES = ("/upload_file/",)  # bodies limited by max_upload_bytes instead


def _streamed(path: str) -> bool:
    """Bodies the route streams and limits itself: uploads (max_upload_bytes) and upload
    session chunks (their exact size, which may exceed max_request_bytes)."""
    return path.startswith(_STREAMED_PREFIXES) or (path.startswith("/uploads/") and "/chunks/" in path)


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id") or ""
        # 128 random bits in hex, as uuid4().hex but without building a UUID object (2.7 -> 0.4 µs).
        rid = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else os.urandom(16).hex()
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # As MutableHeaders(scope=message)["X-Request-ID"] = rid, at a tenth of its cost.
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode("latin-1")))
                message["headers"] = headers
                # Now, while the request span is still open (it ends with the response).
                redact_request_span(_route(scope))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = _route(scope)
            method = scope["method"]
            requests, seconds = _request_metrics(method, route, status)
            requests.inc()
            seconds.observe(elapsed)
            if log.isEnabledFor(logging.INFO):  # the line's fields are not even built otherwise
                principal = scope.get(PRINCIPAL)
                log.info(
                    "%s %s %s",
                    method,
                    route,
                    status,
                    extra={
                        "method": method,
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "key_id": getattr(principal, "key_id", None),
                        "client": (scope.get("client") or ("", 0))[0],
                    },
                )
            request_id.reset(token)


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or _public_prefix(scope["path"]):
            await self.app(scope, receive, send)
            return
        retry = self.state.settings.retry_after_seconds
        if self.state.admission.full():
            # Refused before the key is looked up: the cheapest refusal there is, and the same
            # answer for any key or none, so it tells nothing about keys.
            await error_response(self.state.admission.refuse(_route(scope)), retry)(scope, receive, send)
            return
        with request_scope():
            await self._admitted(scope, receive, send, retry)

    async def _admitted(self, scope: Scope, receive: Receive, send: Send, retry: int) -> None:
        try:
            presented = _header(scope, b"x-api-key") or _bearer(_header(scope, b"authorization"))
            principal = await self.state.auth.authenticate(presented, datetime.now(UTC))
            scope[PRINCIPAL] = principal
            decision = await self.state.limiter.check(principal)
            if decision is not None and not decision.allowed:
                metrics.RATE_LIMITED.labels(principal.key_id).inc()
                # Held, not answered at once (see ratelimit.py): a client retrying in a tight
                # loop then leaves the event loop to the other keys. Costs an idle connection.
                held = min(decision.retry_after, REFUSAL_HOLD_SECONDS)
                await asyncio.sleep(held)
                wait = max(1, math.ceil(decision.retry_after - held))
                raise TooManyRequests(
                    "Rate limit exceeded for this API key",
                    {
                        "Retry-After": str(wait),
                        "RateLimit-Limit": f"{decision.limit:g}",
                        "RateLimit-Remaining": "0",
                        "RateLimit-Reset": str(wait),
                        "RateLimit-Policy": f"{decision.burst};w={decision.burst / decision.limit:g}",
                    },
                )
            if not _streamed(scope["path"]):
                receive = await self._limit_body(scope, receive)
        except PutPlaceError as exc:
            if isinstance(exc, BackendUnavailable) and not isinstance(exc, Overloaded):
                logging.getLogger("putplace.auth").warning("authentication unavailable: %s", exc.detail)
            await error_response(exc, retry)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _limit_body(self, scope: Scope, receive: Receive) -> Receive:
        """Refuse JSON bodies over the cap before FastAPI reads them. A declared length is
        checked as is (the server enforces it); a chunked body is read ahead up to the cap
        and replayed, since FastAPI turns errors raised while it reads a body into 400s."""
        limit = self.state.settings.max_request_bytes
        too_large = PayloadTooLarge(f"Request body larger than {limit} bytes")
        declared = _header(scope, b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > limit:
                raise too_large
            return receive
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                chunks.clear()
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                raise too_large
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay


@functools.lru_cache(maxsize=1024)
def _request_metrics(method: str, route: str, status: int) -> tuple[Any, Any]:
    """The request counter's and histogram's children for these labels, looked up once:
    ``labels()`` (validation, a lock) on every request cost ~2 % of a put_file's CPU."""
    return metrics.REQUESTS.labels(method, route, str(status)), metrics.REQUEST_SECONDS.labels(method, route)


def _header(scope: Scope, name: bytes) -> str | None:
    """A request header (``name`` in lower case, as ASGI servers give them), first of its name.

    Starlette's ``Headers(scope=scope).get()`` of an absent header raises and catches a KeyError:
    ~6 µs here, twice a request (X-Request-ID and Authorization are usually absent)."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _public_prefix(path: str) -> bool:
    return path == "/ui" or path.startswith(PUBLIC_PREFIXES)


def _route(scope: Scope) -> str:
    """The matched route's template: what logs, metrics and traces name a request by.

    A request refused before routing (no key, 429, shed at the cap) has no route in its scope
    yet: the router is asked which route it would have reached, so that those refusals are
    counted under their route rather than all together."""
    route = scope.get("route")
    if route is None and (router := getattr(scope.get("app"), "router", None)) is not None:
        route = next((r for r in iter_route_contexts(router.routes) if r.matches(scope)[0] != Match.NONE), None)
    return getattr(route, "path", None) or "unmatched"


def _bearer(value: str | None) -> str | None:
    # Lets Prometheus (which sends Authorization: Bearer) scrape /metrics with a metrics-scoped key.
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return None
