"""Content by sha256: the second phase of the upload protocol, and download."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from putplace_api.deps import ReadKey, Sha256Path, StateDep, WriteKey, query_name
from putplace_api.errors import (
    KEYED_ROUTE_ERRORS,
    BadRequest,
    HashMismatch,
    NotFound,
    RangeNotSatisfiable,
    UnsupportedMediaType,
    error_responses,
)
from putplace_api.formdata import all_fields, file_field
from putplace_api.mime import SNIFF_BYTES, detect_mime
from putplace_api.reading import first_bytes
from putplace_api.uploads import receive_batch, receive_content
from putplace_client import names
from putplace_client.models import BatchUploadResponse, UploadResponse

router = APIRouter(tags=["content"], responses=KEYED_ROUTE_ERRORS)
log = logging.getLogger("putplace.content")

MAX_BATCH_PARTS = 10_000
FIRST_BYTES = 1024 * 1024  # of a download, read before answering (see get_content)
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

# The upload bodies are read as streams (not by FastAPI), so their shapes are declared here.
_BINARY = {"type": "string", "format": "binary"}
_UPLOAD_BODY = {
    "required": True,
    "content": {
        "application/octet-stream": {"schema": _BINARY},
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": _BINARY}, "required": ["file"]},
        },
    },
}
_BATCH_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "description": "one part per content, named by its sha256 (a part named otherwise is answered "
                "'invalid', the others are still stored)",
                "additionalProperties": _BINARY,
                "minProperties": 1,
            },
        },
    },
}
# Content is served with the MIME type detected when it was stored, hence any media type.
_CONTENT = {"*/*": {"schema": _BINARY}}
_DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The content", "content": _CONTENT},
    206: {"description": "The requested byte range of the content", "content": _CONTENT},
    304: {"description": "Not modified: the If-None-Match ETag is this content's"},
    **error_responses(404, 416),
}


@router.post(
    "/upload_file/{sha256}",
    response_model=UploadResponse,
    responses=error_responses(404, 415),
    openapi_extra={"requestBody": _UPLOAD_BODY},
)
async def upload_file(
    sha256: Sha256Path,
    request: Request,
    state: StateDep,
    key: WriteKey,
    hostname: str | None = None,
    filepath: str | None = None,
    filepath_escaped: bool = False,
) -> UploadResponse:
    """Upload the content of an announced sha256: multipart field ``file`` (as existing
    clients send it) or a raw ``application/octet-stream`` body. Streamed and hashed on the
    way to storage; a mismatch stores nothing."""
    name = query_name(filepath, filepath_escaped) if filepath is not None else None  # only echoed
    content_type = request.headers.get("content-type", "")
    body = request.stream()
    chunks = file_field(body, content_type) if content_type.startswith("multipart/form-data") else body
    try:
        result = await receive_content(
            store=state.store,
            storage=state.storage,
            sha256=sha256,
            chunks=chunks,
            max_bytes=state.settings.max_upload_bytes,
            allowed_mime=state.settings.allowed_mime_types,
            key=key,
            quotas=state.quotas,
        )
    except ClientDisconnect:
        # Nothing was stored; nobody is left to read an answer. Not a server error.
        raise BadRequest("The client disconnected before the upload was complete") from None
    except HashMismatch:
        await state.webhooks.mismatch(sha256, hostname, filepath)
        raise
    if not result.already_stored:
        await state.webhooks.uploaded(sha256, result.size, result.mime_type, hostname, filepath)
    return uploaded(sha256, result.size, hostname, name)


def uploaded(sha256: str, size: int, hostname: str | None, name: names.Name | None) -> UploadResponse:
    """The answer to an upload, one request or a completed session: the name it was told, echoed."""
    return UploadResponse(
        message="File uploaded successfully",
        sha256=sha256,
        size=str(size),
        hostname=hostname,
        filepath=name.filepath if name else None,
        filepath_escaped=name.escaped if name else False,
        status="uploaded",
    )


@router.post(
    "/upload_files",
    response_model=BatchUploadResponse,
    responses=error_responses(415),
    openapi_extra={"requestBody": _BATCH_BODY},
)
async def upload_files(request: Request, state: StateDep, key: WriteKey) -> BatchUploadResponse:
    """Upload many small contents at once: ``multipart/form-data`` with one part per content,
    each named by its sha256 (``curl -F <sha256>=@file …``). Each part gets its own answer;
    the body is capped like a JSON request (``max_request_bytes``): send large files alone."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaType("Send multipart/form-data with one part per content, named by its sha256")
    parts = await all_fields(request.stream(), content_type)
    if not parts:
        raise BadRequest("The body has no parts")
    if len(parts) > MAX_BATCH_PARTS:
        raise BadRequest(f"At most {MAX_BATCH_PARTS} parts per request")
    files = await receive_batch(
        store=state.store,
        storage=state.storage,
        parts=parts,
        max_bytes=state.settings.max_upload_bytes,
        allowed_mime=state.settings.allowed_mime_types,
        key=key,
        quotas=state.quotas,
    )
    await state.webhooks.batch_uploaded(files)
    return BatchUploadResponse(files=files)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One byte range [start, end) or None for the whole content; several ranges are
    answered with the whole content, which RFC 9110 allows."""
    if not header or "," in header:
        return None
    m = _RANGE.match(header.strip())
    if m is None or m.groups() == ("", ""):
        raise RangeNotSatisfiable("Malformed Range header", {"Content-Range": f"bytes */{size}"})
    first, last = m.groups()
    if first == "":  # suffix: the last N bytes
        start, end = max(0, size - int(last)), size
    else:
        start, end = int(first), size if last == "" else min(size, int(last) + 1)
    if start >= size or start >= end:
        raise RangeNotSatisfiable("Range not satisfiable", {"Content-Range": f"bytes */{size}"})
    return start, end


@router.get("/content/{sha256}", response_model=None, response_class=StreamingResponse, responses=_DOWNLOAD_RESPONSES)
async def get_content(sha256: Sha256Path, request: Request, state: StateDep, key: ReadKey) -> Response:
    content = await state.store.get_content(sha256)
    if content is not None and key.visible is not None and not await state.store.visible_shas({sha256}, key.visible):
        content = None  # a restricted key reads a content only through a record it may see
    if content is None or not content.stored:
        raise NotFound(f"File with SHA256 {sha256} not found")
    # A packed content's size is its record's; its pack is found missing when read (below).
    size = content.size if content.pack_id is not None else await state.storage.size(sha256)
    if size is None:
        log.error("content %s is marked stored but missing from storage", sha256)
        raise NotFound(f"File with SHA256 {sha256} not found")
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=31536000, immutable"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    span = _parse_range(request.headers.get("range"), size)
    start, end = span or (0, size)
    headers["Content-Length"] = str(end - start)
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    # Read the first MiB before the status line goes out: storage that went down since size()
    # must be a 503, not a 200 whose body breaks off -- and a content up to that size is then
    # sent whole or not at all. (A larger one failing later can only be cut short; its
    # Content-Length tells the client.)
    try:
        mime = content.mime_type
        if mime is None:  # batch uploads skip sniffing when no allow-list needs it: sniff on first read
            want = min(size, SNIFF_BYTES)
            head, _ = await first_bytes(state.store, state.storage, content, 0, want, want)
            mime = detect_mime(b"".join(head)[:want])
        first, chunks = await first_bytes(state.store, state.storage, content, start, end, FIRST_BYTES)
    except FileNotFoundError:
        log.error("content %s vanished from storage while it was being read", sha256)
        raise NotFound(f"File with SHA256 {sha256} not found") from None
    return StreamingResponse(
        _after(first, chunks),
        status_code=206 if span is not None else 200,
        media_type=mime,
        headers=headers,
    )


async def _after(first: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in first:
        yield chunk
    async for chunk in rest:
        yield chunk
