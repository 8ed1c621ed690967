"""``create_app(settings)``: the FastAPI application; the lifespan opens and closes the backends.

``main`` of uvicorn workers calls ``create_served_app()`` with no argument (factory mode),
which reads the environment -- the CLI has put every flag there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException
from starlette.routing import Match

from putplace_api import __version__, fastpath
from putplace_api.auth import AGENT_KEY_FILE
from putplace_api.errors import Overloaded, PutPlaceError, error_response, log_background_failure, validation_response
from putplace_api.middleware import ObservabilityMiddleware, SecurityMiddleware
from putplace_api.routes import browse, content, files, health, keys, sessions, webhooks
from putplace_api.settings import Settings, get_settings
from putplace_api.state import AppState, build_state
from putplace_api.tracing import setup_tracing
from putplace_api.ui import mount as mount_console
from putplace_common.heap import settle_heap
from putplace_common.logs import request_id

__all__ = ["create_app", "create_served_app"]

log = logging.getLogger("putplace.app")

LAST_USED_FLUSH_SECONDS = 30.0


async def _flush_last_used(state: AppState) -> None:
    while True:
        await asyncio.sleep(LAST_USED_FLUSH_SECONDS)
        try:
            await state.auth.flush_last_used()
        except Exception as exc:  # a database outage must not kill the loop; the times are kept
            log_background_failure(log, "could not record key usage", exc)


def _allowed_methods(app: FastAPI, request: Request) -> str:
    """Every method some route serves at this path: Starlette's 405 names only the first route's."""
    methods: set[str] = set()
    for route in iter_route_contexts(app.router.routes):  # included routers' routes too
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


def create_app(settings: Settings | None = None, *, serving: bool = False) -> FastAPI:
    """``serving``: this process does nothing but serve the app (``putplace-api``), so once it is
    ready the garbage collector is settled for a long life (``putplace_common.heap``). Tests and
    embedders leave it off: freezing their heap would keep their own garbage cycles alive."""
    settings = settings or get_settings()
    state = build_state(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.store.open()
        await state.storage.open()
        admin = settings.admin_key.get_secret_value() if settings.admin_key else None
        await state.auth.bootstrap_admin(admin, settings.data_dir)
        if settings.sync:
            await state.auth.local_agent_key(settings.data_dir / AGENT_KEY_FILE)
        flusher = asyncio.create_task(_flush_last_used(state))
        # Expired upload sessions are looked for at least twice per lifetime, at most once a minute.
        expirer = asyncio.create_task(state.sessions.run(min(60.0, settings.upload_session_ttl_seconds / 2)))
        await state.webhooks.start()
        if serving:
            settle_heap()
        log.info("PutPlace API ready: database=%s storage=%s", state.store.kind, state.storage.kind)
        try:
            yield
        finally:
            flusher.cancel()
            expirer.cancel()
            await state.webhooks.stop()
            with contextlib.suppress(Exception):
                await state.auth.flush_last_used()
            await state.storage.close()
            await state.store.close()
            if tracer is not None:
                tracer.shutdown()  # flushes spans still batched

    app = FastAPI(
        title="PutPlace",
        summary="File Metadata Storage: a catalogue of the files on every node, one copy of each content.",
        version=__version__,
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry hooks stay off: tracing.py instruments the app when an
        # OTLP endpoint is set (and redacts its spans); left on, FastAPI would look up the
        # global providers on every request (~6 % of a put_file's CPU) for nothing.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.putplace = state
    for router in (health.router, files.router, content.router, sessions.router, keys.router, webhooks.router):
        app.include_router(router)
    app.include_router(browse.router)
    mount_console(app)
    fastpath.serve_first(app)

    @app.exception_handler(PutPlaceError)
    async def putplace_error(request: Request, exc: PutPlaceError) -> JSONResponse:
        # A shed request is counted (putplace_shed_total), not logged: under overload a line
        # each would add to the load being shed.
        if exc.status_code >= 500 and not isinstance(exc, Overloaded):
            log.warning("%s", exc.detail)
        return error_response(exc, settings.retry_after_seconds)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        return validation_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 405:  # RFC 9110: Allow lists every method the resource supports
            exc.headers = {**(exc.headers or {}), "Allow": _allowed_methods(app, request)}
        return await http_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse({"detail": "Internal server error", "request_id": request_id.get()}, status_code=500)

    # Added last = outermost: observability wraps security, so denied requests are logged too.
    app.add_middleware(SecurityMiddleware, state=state)
    app.add_middleware(ObservabilityMiddleware)
    tracer = setup_tracing(app, settings.otlp_endpoint)
    return app


def create_served_app() -> FastAPI:
    """The factory of ``putplace-api --workers N``: each worker process only serves."""
    return create_app(serving=True)
