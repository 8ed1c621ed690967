"""Upload sessions over HTTP: chunked, resumable uploads of large contents (``putplace_api.sessions``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from starlette.requests import ClientDisconnect

from putplace_api.deps import StateDep, WriteKey, query_name
from putplace_api.errors import KEYED_ROUTE_ERRORS, BadRequest, error_responses
from putplace_api.routes.content import uploaded
from putplace_api.sessions import SessionMismatch
from putplace_client.models import (
    CHUNK_SHA256_HEADER,
    SHA256_RE,
    ChunkReceived,
    UploadResponse,
    UploadSession,
    UploadSessionCreate,
)

router = APIRouter(prefix="/uploads", tags=["upload sessions"], responses=KEYED_ROUTE_ERRORS)

UploadId = Annotated[str, Path(description="the session's id, as its creation answered", max_length=64)]
# Read from the request (not by FastAPI): an optional header is documented as a plain string.
_CHUNK_SHA256 = {
    "name": CHUNK_SHA256_HEADER,
    "in": "header",
    "required": False,
    "description": "the chunk's sha256: a chunk not hashing to it is refused",
    "schema": {"type": "string", "pattern": SHA256_RE.pattern},
}
_CHUNK_BODY = {
    "required": True,
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}


@router.post("", status_code=201, response_model=UploadSession, responses=error_responses(404, 409))
async def create_session(body: UploadSessionCreate, state: StateDep, key: WriteKey) -> UploadSession:
    """Open a session to upload an announced content in chunks (for large files; the answer
    says how it is cut). 409: the content is stored already."""
    return await state.sessions.create(key, body.sha256, body.size)


@router.get("/{upload_id}", response_model=UploadSession, responses=error_responses(404))
async def session_status(upload_id: UploadId, state: StateDep, key: WriteKey) -> UploadSession:
    """The session, with the chunks the server holds: after a restart, send only the others."""
    return await state.sessions.status(key, upload_id)


@router.put(
    "/{upload_id}/chunks/{number}",
    response_model=ChunkReceived,
    responses=error_responses(404),
    openapi_extra={"requestBody": _CHUNK_BODY, "parameters": [_CHUNK_SHA256]},
)
async def put_chunk(
    upload_id: UploadId,
    number: Annotated[int, Path(ge=0, le=1_000_000)],
    request: Request,
    state: StateDep,
    key: WriteKey,
) -> ChunkReceived:
    """Chunk ``number`` as a raw body of exactly its size; any order, in parallel. A chunk the
    server holds already is not written again."""
    chunk_sha256 = request.headers.get(CHUNK_SHA256_HEADER)
    if chunk_sha256 is not None and not SHA256_RE.match(chunk_sha256):
        raise BadRequest(f"{CHUNK_SHA256_HEADER} must be 64 lowercase hex digits")
    try:
        size = await state.sessions.receive_chunk(key, upload_id, number, request.stream(), chunk_sha256)
    except ClientDisconnect:
        raise BadRequest("The client disconnected before the chunk was complete") from None
    return ChunkReceived(upload_id=upload_id, number=number, size=size)


@router.post("/{upload_id}/complete", response_model=UploadResponse, responses=error_responses(404, 415))
async def complete_session(
    upload_id: UploadId,
    state: StateDep,
    key: WriteKey,
    hostname: str | None = None,
    filepath: str | None = None,
    filepath_escaped: bool = False,
) -> UploadResponse:
    """Put the chunks together, hash the whole and store it as an upload does; a mismatch (400)
    discards the session. ``hostname`` and ``filepath`` are only echoed (and told to webhooks)."""
    name = query_name(filepath, filepath_escaped) if filepath is not None else None
    try:
        done = await state.sessions.complete(key, upload_id)
    except SessionMismatch as exc:
        await state.webhooks.mismatch(exc.sha256, hostname, filepath)
        raise
    await state.webhooks.uploaded(done.sha256, done.size, done.mime_type, hostname, filepath)
    return uploaded(done.sha256, done.size, hostname, name)


@router.delete("/{upload_id}", status_code=204, response_class=Response, responses=error_responses(404))
async def abort_session(upload_id: UploadId, state: StateDep, key: WriteKey) -> Response:
    """Abort: the session and its chunks are discarded."""
    await state.sessions.abort(key, upload_id)
    return Response(status_code=204)
