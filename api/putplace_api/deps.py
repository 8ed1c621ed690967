"""FastAPI dependencies as ``Annotated`` aliases: the app state and scope-checked keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request, Security
from fastapi.security import APIKeyHeader

from putplace_api.auth import MISSING_KEY, Principal
from putplace_api.errors import BadRequest, Forbidden, Unauthorized
from putplace_api.middleware import PRINCIPAL
from putplace_api.state import AppState
from putplace_client import names
from putplace_client.models import SHA256_RE, Scope, is_sha256

__all__ = [
    "StateDep",
    "ReadKey",
    "WriteKey",
    "AdminKey",
    "MetricsKey",
    "AnyKey",
    "KeyCheck",
    "Sha256Path",
    "FileNameQuery",
    "query_name",
]


# Dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its
# thread pool, a thread hop per request for what is a dictionary lookup.


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.putplace
    return state


class KeyCheck(APIKeyHeader):
    """The request's key, which SecurityMiddleware has checked already (it also takes
    ``Authorization: Bearer``, for Prometheus on the undocumented /metrics): declared in the
    OpenAPI document as the ``X-API-Key`` header, and here only its scope is checked.

    One dependency does both: declared apart (a check depending on an ``APIKeyHeader``), they
    were two for FastAPI to solve on every request, ~5 % of a ``put_file``'s CPU."""

    def __init__(self, scope: Scope | None) -> None:
        super().__init__(
            name="X-API-Key", scheme_name="APIKeyHeader", auto_error=False, description="an API key, e.g. pp_…"
        )
        self.scope = scope

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        principal: Principal | None = request.scope.get(PRINCIPAL)
        if principal is None:  # a route mounted on a public path by mistake: still deny
            raise Unauthorized(MISSING_KEY)
        if self.scope is not None and not principal.allows(self.scope):
            raise Forbidden(f"This API key lacks the '{self.scope.value}' scope")
        return principal


StateDep = Annotated[AppState, Depends(get_state)]
ReadKey = Annotated[Principal, Security(KeyCheck(Scope.READ))]
WriteKey = Annotated[Principal, Security(KeyCheck(Scope.WRITE))]
AdminKey = Annotated[Principal, Security(KeyCheck(Scope.ADMIN))]
MetricsKey = Annotated[Principal, Security(KeyCheck(Scope.METRICS))]
AnyKey = Annotated[Principal, Security(KeyCheck(None))]  # any valid key, whatever its scopes


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
