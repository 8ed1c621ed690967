"""Read-only views of the catalogue for people: nodes, a node's directories, glob search,
recent changes, one record by path, and who a key is (``/whoami``).

The web console (``putplace_api.ui``) calls these from the browser with the user's key, like
any other client: its scope rules are those of the API. Every listing is a page of an
index walk with a cursor (``store.base.ConsoleStore``), so a large catalogue costs no more
per page than a small one.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, cast

from fastapi import APIRouter, Query

from putplace_api.auth import Principal
from putplace_api.deps import AnyKey, FileNameQuery, ReadKey, StateDep
from putplace_api.errors import KEYED_ROUTE_ERRORS, BadRequest, NotFound, error_responses
from putplace_api.routes.files import to_record
from putplace_api.state import AppState
from putplace_api.store.base import (
    OBJECT_ID_PATTERN,
    PATH_END,
    ConsoleStore,
    FileRow,
    directory,
    is_object_id,
    list_dir,
)
from putplace_client.console import NodeInfo, TreeEntry, WhoAmI
from putplace_client.models import FileRecord, Page, Scope

router = APIRouter(tags=["browse"], responses=KEYED_ROUTE_ERRORS)

Limit = Annotated[int, Query(ge=1, le=1000)]
MAX_STARS = 8
Cursor = Annotated[str | None, Query(max_length=8192, description="next_cursor of the previous page")]


def _store(state: AppState) -> ConsoleStore:
    return cast(ConsoleStore, state.store)


def _visible(key: Principal, rows: list[FileRow]) -> list[FileRow]:
    """The rows a limited key may see (after the page is cut: the cursor follows every row, so
    a page may come out short, never skip one)."""
    v = key.visible
    return rows if v is None else [r for r in rows if v.allows(r.meta.hostname, r.meta.filepath)]


async def _records(state: AppState, rows: list[FileRow]) -> list[FileRecord]:
    contents = await state.store.contents({r.meta.sha256 for r in rows})
    return [to_record(r, contents.get(r.meta.sha256)) for r in rows]


@router.get("/whoami", response_model=WhoAmI)
async def whoami(principal: AnyKey) -> WhoAmI:
    """The name and scopes of the key making the request (any valid key may ask)."""
    return WhoAmI(name=principal.name, scopes=sorted(Scope(s) for s in principal.scopes))


@router.get("/nodes", response_model=Page[NodeInfo])
async def list_nodes(state: StateDep, key: ReadKey, cursor: Cursor = None, limit: Limit = 100) -> Page[NodeInfo]:
    """Every node that has current records, by hostname (no counts: they would read every record).
    A key limited to hosts sees only those; one limited to paths, only the nodes with a record
    inside them."""
    store = _store(state)
    rows = await store.list_nodes(cursor, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    v = key.visible
    shown = rows if v is None else [h for h in rows if v.hostnames is None or h in v.hostnames]
    if v is not None and v.path_prefixes is not None:
        shown = [h for h in shown if await _has_records_under(store, h, v.path_prefixes)]
    return Page[NodeInfo](items=[NodeInfo(hostname=h) for h in shown], next_cursor=rows[-1] if more and rows else None)


async def _has_records_under(store: ConsoleStore, hostname: str, prefixes: tuple[str, ...]) -> bool:
    """Whether a current record of ``hostname`` is one of ``prefixes`` or lies under one: a seek or
    two on the (hostname, filepath) index per prefix."""
    for prefix in prefixes:
        if await store.paths_after(hostname, directory(prefix), directory(prefix) + PATH_END, 1):
            return True
        if await store.current_file(hostname, prefix) is not None:
            return True
    return False


@router.get("/files/tree", response_model=Page[TreeEntry])
async def file_tree(
    state: StateDep,
    key: ReadKey,
    hostname: Annotated[str, Query(min_length=1)],
    directory: Annotated[str, Query(alias="dir", min_length=1, max_length=4096)] = "/",
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[TreeEntry]:
    """The children of one directory of a node, in path order: subdirectories (``kind: dir``,
    path ending with ``/``) and files with their current record. A limited key sees the files
    inside its limits and the directories inside them or on the way to them."""
    entries = await list_dir(_store(state), hostname, directory, cursor, limit + 1)
    more = len(entries) > limit
    page = entries[:limit]
    v = key.visible
    if v is not None:  # the cursor still follows every entry: a page may come out short
        page = [
            e for e in page if (v.allows(hostname, e.file.meta.filepath) if e.file else v.reaches(hostname, e.path))
        ]
    records = iter(await _records(state, [e.file for e in page if e.file is not None]))
    items = [
        TreeEntry(name=e.name, path=e.path, kind="dir")
        if e.file is None
        else TreeEntry(name=e.name, path=e.path, kind="file", file=next(records))
        for e in page
    ]
    return Page[TreeEntry](items=items, next_cursor=entries[limit - 1].path if more else None)


@router.get("/files/current", response_model=FileRecord, responses=error_responses(404))
async def current_file(
    state: StateDep,
    key: ReadKey,
    hostname: Annotated[str, Query(min_length=1)],
    name: FileNameQuery,
) -> FileRecord:
    """The current record of one path of one node (``filepath_escaped=true``: an escaped name)."""
    key.check_path(hostname, name.filepath)
    row = await _store(state).current_file(hostname, name.filepath, name.escaped)
    if row is None:
        raise NotFound(f"No current record for {name.filepath} on {hostname}")
    return (await _records(state, [row]))[0]


@router.get("/files/search", response_model=Page[FileRecord])
async def search_files(
    state: StateDep,
    key: ReadKey,
    q: Annotated[
        str,
        Query(
            min_length=1,
            max_length=4096,
            description="a glob (at most 8 *); without / it matches file names",
            json_schema_extra={"pattern": rf"^[^*]*(\*[^*]*){{0,{MAX_STARS}}}$"},  # checked in the route: a 400
        ),
    ],
    hostname: str | None = None,
    cursor: Annotated[str | None, Query(json_schema_extra={"pattern": OBJECT_ID_PATTERN})] = None,
    limit: Limit = 100,
) -> Page[FileRecord]:
    """Current records whose path matches a glob (``*`` ``?`` ``[...]``, ``*`` crosses ``/``);
    a pattern without ``/`` matches the file name in any directory. Oldest record first."""
    if cursor is not None and not is_object_id(cursor):
        raise BadRequest("Invalid cursor")  # documented, not enforced by FastAPI: a 400 as on /files
    if q.count("*") > MAX_STARS:
        # each * multiplies the backtracking of GLOB and $regex on a long path: bounded, not a DoS
        raise BadRequest(f"A search pattern may hold at most {MAX_STARS} '*'")
    pattern = q if "/" in q else "*/" + q
    rows = await _store(state).search_files(pattern, hostname, cursor, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return Page[FileRecord](
        items=await _records(state, _visible(key, rows)), next_cursor=rows[-1].id if more and rows else None
    )


# The recent-changes cursor: updated_at in microseconds since the epoch, then the id. Every
# string of this shape is a valid cursor (17 digits stay below year 9999), so the pattern is
# the whole rule.
RECENT_CURSOR = re.compile(r"^(\d{1,17})-([0-9a-fA-F]{24})$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _recent_cursor(row: FileRow) -> str:
    return f"{(row.updated_at - _EPOCH) // _MICROSECOND}-{row.id}"


def _parse_recent_cursor(cursor: str) -> tuple[datetime, str]:
    m = RECENT_CURSOR.match(cursor)
    if m is None:
        raise BadRequest("Invalid cursor")
    return _EPOCH + int(m.group(1)) * _MICROSECOND, m.group(2)


@router.get("/files/recent", response_model=Page[FileRecord])
async def recent_files(
    state: StateDep,
    key: ReadKey,
    cursor: Annotated[str | None, Query(json_schema_extra={"pattern": RECENT_CURSOR.pattern})] = None,
    limit: Limit = 100,
) -> Page[FileRecord]:
    """Current records, the most recently changed first."""
    before = None if cursor is None else _parse_recent_cursor(cursor)
    rows = await _store(state).recent_files(before, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return Page[FileRecord](
        items=await _records(state, _visible(key, rows)),
        next_cursor=_recent_cursor(rows[-1]) if more and rows else None,
    )
