"""Public endpoints (landing page, health, probes) and the key-protected /metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel

from putplace_api import metrics
from putplace_api.deps import MetricsKey, StateDep
from putplace_api.state import AppState

router = APIRouter()

PING_TIMEOUT = 2.0

_LANDING = """<!doctype html>
<html><head><meta charset="utf-8"><title>PutPlace</title></head>
<body><h1>PutPlace</h1><p>File Metadata Storage: one catalogue of the files on every node,
one copy of each distinct content.</p><p>API documentation: <a href="/docs">/docs</a></p></body></html>
"""


async def _answers(check: Any) -> bool:
    try:
        await asyncio.wait_for(check(), PING_TIMEOUT)
        return True
    except Exception:  # any failure, timeout included, means "not answering"
        return False


async def _probe(state: AppState) -> tuple[bool, bool]:
    db, storage = await asyncio.gather(_answers(state.store.ping), _answers(state.storage.ping))
    return db, storage


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def landing() -> str:
    return _LANDING


@router.get("/health")
async def health(state: StateDep) -> dict[str, Any]:
    """Always 200; ``status`` says whether the backends answer."""
    db, storage = await _probe(state)
    return {
        "status": "healthy" if db and storage else "degraded",
        "database": {"status": "connected" if db else "disconnected", "type": state.store.kind},
        "storage": {"status": "connected" if storage else "disconnected", "type": state.storage.kind},
    }


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process serves requests."""
    return {"status": "ok"}


class Readiness(BaseModel):
    status: str
    database: bool
    storage: bool


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A backend does not answer; retry after Retry-After"}},
)
async def readyz(state: StateDep) -> JSONResponse:
    """Readiness: 503 unless both the database and the storage answer."""
    db, storage = await _probe(state)
    ready = db and storage
    body = {"status": "ready" if ready else "not ready", "database": db, "storage": storage}
    headers = None if ready else {"Retry-After": str(state.settings.retry_after_seconds)}
    return JSONResponse(body, status_code=200 if ready else 503, headers=headers)


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(_: MetricsKey) -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
