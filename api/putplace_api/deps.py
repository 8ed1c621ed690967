"""FastAPI dependencies as ``Annotated`` aliases: the app state and scope-checked keys."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from putplace_api.auth import MISSING_KEY, Principal
from putplace_api.errors import BadRequest, Forbidden, Unauthorized
from putplace_api.middleware import PRINCIPAL
from putplace_api.state import AppState
from putplace_client.models import Scope, is_sha256

__all__ = ["StateDep", "ReadKey", "WriteKey", "AdminKey", "MetricsKey", "Sha256Path"]


# Dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its
# thread pool, a thread hop per request for what is a dictionary lookup.


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.putplace
    return state


def require(scope: Scope) -> Callable[[Request], Awaitable[Principal]]:
    async def check(request: Request) -> Principal:
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


async def valid_sha256(sha256: str) -> str:
    """The ``{sha256}`` path parameter; malformed is a 400 (as existing clients expect), not a 422."""
    if not is_sha256(sha256):
        raise BadRequest("Invalid SHA256 hash format: expected 64 lowercase hexadecimal characters")
    return sha256


Sha256Path = Annotated[str, Depends(valid_sha256)]
