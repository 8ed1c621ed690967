"""API key administration (admin scope): create, list (with each key's usage against its quotas),
revoke, delete."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path

from putplace_api.auth import generate_key, make_key_row
from putplace_api.deps import AdminKey, StateDep
from putplace_api.errors import KEYED_ROUTE_ERRORS, NotFound, error_responses
from putplace_api.store.base import OBJECT_ID_PATTERN, KeyRow, KeyUsage, is_object_id
from putplace_client.models import ApiKeyCreate, ApiKeyCreated, ApiKeyInfo, MessageResponse, Scope

router = APIRouter(prefix="/api_keys", tags=["api keys"], responses=KEYED_ROUTE_ERRORS)


def _listed(values: tuple[str, ...] | None) -> list[str] | None:
    return None if values is None else list(values)


def to_info(row: KeyRow, usage: KeyUsage | None = None) -> ApiKeyInfo:
    usage = usage or KeyUsage()
    return ApiKeyInfo(
        id=row.id,
        name=row.name,
        description=row.description,
        scopes=[Scope(s) for s in row.scopes],
        rate_limit=row.rate_limit,
        rate_limit_burst=row.rate_limit_burst,
        key_prefix=row.key_prefix,
        created_at=row.created_at,
        expires_at=row.expires_at,
        is_active=row.is_active,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
        hostnames=_listed(row.hostnames),
        path_prefixes=_listed(row.path_prefixes),
        max_bytes=row.max_bytes,
        max_files=row.max_files,
        used_bytes=usage.bytes,
        used_files=usage.files,
    )


# Documented, not enforced by FastAPI: an id of the wrong shape is a 404 like any unknown id.
KeyId = Annotated[str, Path(json_schema_extra={"pattern": OBJECT_ID_PATTERN})]


def _not_found(key_id: str) -> NotFound:
    # Echo only well-formed ids: what a caller puts in the path may be a key itself.
    return NotFound(f"API key {key_id} not found" if is_object_id(key_id) else "API key not found")


@router.post("", status_code=201, response_model=ApiKeyCreated)
async def create_key(body: ApiKeyCreate, state: StateDep, _: AdminKey) -> ApiKeyCreated:
    """Create a key; the response is the only place its plaintext ever appears."""
    key = generate_key()
    expires = body.expires_at.replace(tzinfo=UTC) if body.expires_at and not body.expires_at.tzinfo else body.expires_at
    row = make_key_row(
        key,
        body.name,
        tuple(dict.fromkeys(s.value for s in body.scopes)),
        description=body.description,
        rate_limit=body.rate_limit,
        rate_limit_burst=body.rate_limit_burst,
        expires_at=expires,
        hostnames=None if body.hostnames is None else tuple(body.hostnames),
        path_prefixes=None if body.path_prefixes is None else tuple(body.path_prefixes),
        max_bytes=body.max_bytes,
        max_files=body.max_files,
    )
    await state.store.insert_key(row)
    return ApiKeyCreated(**to_info(row).model_dump(by_alias=True), api_key=key)


@router.get("", response_model=list[ApiKeyInfo])
async def list_keys(state: StateDep, _: AdminKey) -> list[ApiKeyInfo]:
    await state.auth.flush_last_used()
    rows = await state.store.list_keys()
    usage = await state.store.key_usage([r.id for r in rows])
    return [to_info(r, usage.get(r.id)) for r in rows]


@router.put("/{key_id}/revoke", response_model=MessageResponse, responses=error_responses(404))
async def revoke_key(key_id: KeyId, state: StateDep, _: AdminKey) -> MessageResponse:
    if not is_object_id(key_id) or not await state.store.revoke_key(key_id, datetime.now(UTC)):
        raise _not_found(key_id)
    return MessageResponse(message=f"API key {key_id} revoked successfully")


@router.delete("/{key_id}", response_model=MessageResponse, responses=error_responses(404))
async def delete_key(key_id: KeyId, state: StateDep, _: AdminKey) -> MessageResponse:
    if not is_object_id(key_id) or not await state.store.delete_key(key_id):
        raise _not_found(key_id)
    return MessageResponse(message=f"API key {key_id} deleted successfully")
