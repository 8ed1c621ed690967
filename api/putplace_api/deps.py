"""FastAPI dependencies as ``Annotated`` aliases: the app state and scope-checked keys."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Path, Query, Request, Security
from fastapi.security import APIKeyHeader

from putplace_api.auth import MISSING_KEY, Principal
from putplace_api.errors import BadRequest, Forbidden, Unauthorized
from putplace_api.middleware import PRINCIPAL
from putplace_api.state import AppState
from putplace_client import names
from putplace_client.models import SHA256_RE, Scope, is_sha256

__all__ = ["StateDep", "ReadKey", "WriteKey", "AdminKey", "MetricsKey", "Sha256Path", "FileNameQuery", "query_name"]


# Dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its
# thread pool, a thread hop per request for what is a dictionary lookup.


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.putplace
    return state


# Declares the key in the OpenAPI document only: SecurityMiddleware has checked it already
# (it also takes ``Authorization: Bearer``, for Prometheus on the undocumented /metrics).
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key, e.g. pp_…")


def require(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    async def check(request: Request, _: Annotated[str | None, Security(API_KEY_HEADER)]) -> Principal:
        principal: Principal | None = request.scope.get(PRINCIPAL)
        if principal is None:  # a route mounted on a public path by mistake: still deny
            raise Unauthorized(MISSING_KEY)
        if not principal.allows(scope):
            raise Forbidden(f"This API key lacks the '{scope.value}' scope")
        return principal

    return check


StateDep = Annotated[AppState, Depends(get_state)]
ReadKey = Annotated[Principal, Depends(require(Scope.READ))]
WriteKey = Annotated[Principal, Depends(require(Scope.WRITE))]
AdminKey = Annotated[Principal, Depends(require(Scope.ADMIN))]
MetricsKey = Annotated[Principal, Depends(require(Scope.METRICS))]


async def valid_sha256(
    sha256: Annotated[str, Path(json_schema_extra={"pattern": SHA256_RE.pattern}, description="64 lowercase hex")],
) -> str:
    """The ``{sha256}`` path parameter; malformed is a 400 (as existing clients expect), not a 422,
    so the pattern is documented rather than given to FastAPI to enforce."""
    if not is_sha256(sha256):
        raise BadRequest("Invalid SHA256 hash format: expected 64 lowercase hexadecimal characters")
    return sha256


Sha256Path = Annotated[str, Depends(valid_sha256)]


def query_name(text: str, escaped: bool, param: str = "filepath") -> names.Name:
    """A file name (or path prefix) from query parameters, canonical (``names.canonical``); a
    malformed escaped form is a 400, as any other malformed query parameter."""
    try:
        return names.canonical(text, escaped)
    except names.MalformedName as exc:
        raise BadRequest(f"{param} is not a valid escaped name ({param}_escaped=true): {exc}") from None


async def file_name(
    filepath: Annotated[str, Query(min_length=1)],
    filepath_escaped: Annotated[
        bool, Query(description="true: filepath is the escaped form of a name that is not UTF-8")
    ] = False,
) -> names.Name:
    return query_name(filepath, filepath_escaped)


FileNameQuery = Annotated[names.Name, Depends(file_name)]
