"""File metadata: announce (one or a batch), look up, list, history, delete, stats.

A key limited to hosts and paths (``Principal.visible``) is refused (403) any record outside them
that it names, and sees only the records inside them in what it lists, looks up or counts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from putplace_api import fastpath, metrics
from putplace_api.auth import Principal, describe
from putplace_api.deps import FileNameQuery, ReadKey, Sha256Path, StateDep, WriteKey, query_name
from putplace_api.errors import KEYED_ROUTE_ERRORS, BadRequest, Forbidden, NotFound, error_responses
from putplace_api.store.base import OBJECT_ID_PATTERN, ContentRow, FileQuery, FileRow, PutResult, is_object_id
from putplace_client import names
from putplace_client.models import (
    DateTime,
    DeleteFileResponse,
    FileMetadata,
    FileRecord,
    HistoryRecord,
    Page,
    PutFileResponse,
    PutFileResult,
    PutFilesRequest,
    PutFilesResponse,
    Stats,
)

router = APIRouter(tags=["files"], responses=KEYED_ROUTE_ERRORS)


# Responses are assembled with model_construct: every value was validated on the way in
# (request models, store rows), and validating again costs more than the database write.


def _record_fields(row: FileRow, content: ContentRow | None) -> dict[str, Any]:
    """A record's fields as the protocol shows them; upload time and storage path only once stored."""
    stored = content if content is not None and content.stored else None
    return {
        # vars(), not dict(): dict() first asks the model for a keys() method, which pydantic's
        # __getattr__ answers by raising AttributeError: 3.9 -> 0.1 µs (extra="ignore": no extras).
        **vars(row.meta),
        "id": row.id,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "has_file_content": stored is not None,
        "file_uploaded_at": stored.stored_at if stored else None,
        "storage_path": stored.storage_path if stored else None,
    }


def to_record(row: FileRow, content: ContentRow | None = None) -> FileRecord:
    return FileRecord.model_construct(**_record_fields(row, content))


def to_put_response(result: PutResult) -> PutFileResponse:
    return PutFileResponse.model_construct(
        **_record_fields(result.file, result.content),
        upload_required=not result.content.stored,
        upload_url=_upload_url(result.content),
    )


async def _announce(state: StateDep, key: Principal, files: list[FileMetadata]) -> list[PutResult]:
    if key.visible is not None:
        outside = [f for f in files if not key.visible.allows(f.hostname, f.filepath)]
        if outside:  # nothing is recorded: the caller sends the batch again without them
            first = outside[0]
            some = f"{len(outside)} of the {len(files)} records, the first " if len(files) > 1 else ""
            raise Forbidden(
                f"This API key may not access {some}{first.filepath} on {first.hostname}: {describe(key.visible)}"
            )
    results = await state.store.put_files(files, now := datetime.now(UTC))
    await state.webhooks.announced(results, now)
    required = sum(not r.content.stored for r in results)
    deduplicated = sum(r.file.meta.file_size for r in results if r.content.stored)
    if required:
        metrics.ANNOUNCED_FILES.labels("true").inc(required)
    if required < len(results):
        metrics.ANNOUNCED_FILES.labels("false").inc(len(results) - required)
    if deduplicated:
        metrics.DEDUP_BYTES.inc(deduplicated)
    return results


def _upload_url(content: ContentRow) -> str | None:
    return None if content.stored else f"/upload_file/{content.sha256}"


@fastpath.post(router, "/put_file", status_code=201, response_model=PutFileResponse)
async def put_file(body: FileMetadata, state: StateDep, key: WriteKey) -> PutFileResponse:
    """Record one file; ``upload_required`` says whether its content must be uploaded."""
    return to_put_response((await _announce(state, key, [body]))[0])


@fastpath.post(router, "/put_files", status_code=201, response_model=PutFilesResponse)
async def put_files(body: PutFilesRequest, state: StateDep, key: WriteKey) -> PutFilesResponse:
    """Record up to 10,000 files in one request; the answer says, per record and in order,
    whether its content must be uploaded (without echoing the metadata back)."""
    results = await _announce(state, key, body.files)
    return PutFilesResponse.model_construct(
        files=[
            PutFileResult.model_construct(
                id=r.file.id,
                hostname=r.file.meta.hostname,
                filepath=r.file.meta.filepath,
                filepath_escaped=r.file.meta.filepath_escaped,
                sha256=r.content.sha256,
                upload_required=not r.content.stored,
                upload_url=_upload_url(r.content),
            )
            for r in results
        ]
    )


@router.get("/get_file/{sha256}", response_model=FileRecord, responses=error_responses(404))
async def get_file(sha256: Sha256Path, state: StateDep, key: ReadKey) -> FileRecord:
    if key.visible is None:
        row = await state.store.file_by_sha(sha256)
    else:  # the first record it may see (404 as for an unknown sha256: nothing leaks)
        row = next(iter(await state.store.list_files(FileQuery(sha256=sha256, limit=1, visible=key.visible))), None)
    if row is None:
        raise NotFound(f"File with SHA256 {sha256} not found")
    return to_record(row, await state.store.get_content(sha256))


@router.get("/files", response_model=Page[FileRecord])
async def list_files(
    state: StateDep,
    key: ReadKey,
    hostname: str | None = None,
    path_prefix: str | None = None,
    path_prefix_escaped: Annotated[
        bool, Query(description="true: path_prefix is an escaped form; only escaped names match it")
    ] = False,
    sha256: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None,
    changed_since: DateTime | None = None,
    cursor: Annotated[str | None, Query(json_schema_extra={"pattern": OBJECT_ID_PATTERN})] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Page[FileRecord]:
    """Current records, oldest first, filtered by host, path prefix, content or change time.
    Every location of a content: ``?sha256=``. A plain ``path_prefix`` matches the names under
    it, escaped or not."""
    if cursor is not None and not is_object_id(cursor):
        raise BadRequest("Invalid cursor")
    if changed_since is not None and changed_since.tzinfo is None:
        changed_since = changed_since.replace(tzinfo=UTC)
    prefix = query_name(path_prefix, path_prefix_escaped, "path_prefix") if path_prefix else names.Name("")
    rows = await state.store.list_files(
        FileQuery(
            hostname,
            prefix.filepath,
            prefix.escaped,
            sha256,
            changed_since,
            after_id=cursor,
            limit=limit + 1,
            visible=key.visible,
        )
    )
    more = len(rows) > limit
    rows = rows[:limit]
    contents = await state.store.contents({r.meta.sha256 for r in rows})
    items = [to_record(r, contents.get(r.meta.sha256)) for r in rows]
    return Page[FileRecord](items=items, next_cursor=rows[-1].id if more and rows else None)


@router.get("/files/history", response_model=Page[HistoryRecord])
async def file_history(
    state: StateDep,
    key: ReadKey,
    hostname: str,
    name: FileNameQuery,
    before: DateTime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Page[HistoryRecord]:
    """Earlier versions of one path, newest first (``before`` = the previous page's last ``superseded_at``)."""
    key.check_path(hostname, name.filepath)
    rows = await state.store.history(hostname, name.filepath, limit + 1, before, escaped=name.escaped)
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        HistoryRecord.model_construct(**dict(to_record(h.file)), superseded_at=h.superseded_at, event=h.event)
        for h in rows
    ]
    return Page[HistoryRecord](items=items, next_cursor=rows[-1].superseded_at.isoformat() if more and rows else None)


@router.delete("/files", response_model=DeleteFileResponse, responses=error_responses(404))
async def delete_file(state: StateDep, key: WriteKey, hostname: str, name: FileNameQuery) -> DeleteFileResponse:
    """A deletion notice: the record leaves the current catalogue, its history stays, its content stays."""
    key.check_path(hostname, name.filepath)
    if not await state.store.delete_file(hostname, name.filepath, datetime.now(UTC), escaped=name.escaped):
        shown = f"{name.filepath} (escaped)" if name.escaped else name.filepath
        raise NotFound(f"No current record for {shown} on {hostname}")
    await state.webhooks.deleted(hostname, name.filepath, name.escaped)
    return DeleteFileResponse(
        message="File record deleted", hostname=hostname, filepath=name.filepath, filepath_escaped=name.escaped
    )


@router.get("/stats", response_model=Stats)
async def stats(state: StateDep, key: ReadKey) -> Stats:
    """Catalogue totals; a key limited to hosts or paths gets those of its records."""
    s = await state.store.stats(key.visible)
    ratio = s.logical_bytes / s.stored_bytes if s.stored_bytes else 1.0
    return Stats(
        files=s.files,
        hosts=s.hosts,
        contents_stored=s.contents_stored,
        stored_bytes=s.stored_bytes,
        logical_bytes=s.logical_bytes,
        dedup_ratio=round(ratio, 4),
    )
