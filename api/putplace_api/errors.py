"""One error hierarchy for the service, turned into JSON responses by one handler.

Routes and services raise these; backends translate their drivers' exceptions into
``BackendUnavailable`` at their own boundary, so no route knows pymongo or botocore.

    PutPlaceError
    ├── BadRequest (400)
    │   └── HashMismatch: uploaded bytes that are not the content they name
    ├── Unauthorized (401)
    ├── Forbidden (403)
    ├── NotFound (404)
    ├── Conflict (409)
    ├── RangeNotSatisfiable (416)
    ├── PayloadTooLarge (413)
    ├── UnsupportedMediaType (415)
    ├── TooManyRequests (429)
    └── BackendUnavailable (503)
        └── Overloaded (503): this process already runs its cap of database operations
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, Response

__all__ = [
    "PutPlaceError",
    "BadRequest",
    "HashMismatch",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "RangeNotSatisfiable",
    "TooManyRequests",
    "BackendUnavailable",
    "Overloaded",
    "ErrorDetail",
    "KEYED_ROUTE_ERRORS",
    "error_responses",
    "error_response",
    "validation_response",
    "log_background_failure",
]


class PutPlaceError(Exception):
    status_code = 500

    def __init__(self, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})


class BadRequest(PutPlaceError):
    status_code = 400


class HashMismatch(BadRequest):
    pass


class Unauthorized(PutPlaceError):
    status_code = 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail, {"WWW-Authenticate": "ApiKey"})


class Forbidden(PutPlaceError):
    status_code = 403


class NotFound(PutPlaceError):
    status_code = 404


class Conflict(PutPlaceError):
    status_code = 409


class PayloadTooLarge(PutPlaceError):
    status_code = 413


class UnsupportedMediaType(PutPlaceError):
    status_code = 415


class RangeNotSatisfiable(PutPlaceError):
    status_code = 416


class TooManyRequests(PutPlaceError):
    status_code = 429


class BackendUnavailable(PutPlaceError):
    """The database or the content storage did not answer; the client should retry."""

    status_code = 503

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"{backend} unavailable: {reason}")
        self.backend = backend


class Overloaded(BackendUnavailable):
    """Refused before it started: the process already runs as many database operations as it
    may (``PUTPLACE_DATABASE_MAX_CONCURRENCY``). Nothing was done; the client should retry."""

    def __init__(self, backend: str, limit: int, retry_after: int) -> None:
        super().__init__(backend, f"busy: {limit} operations already in progress in this process")
        self.headers["Retry-After"] = str(retry_after)  # grows with the pressure (admission.RetryAfter)


def log_background_failure(log: logging.Logger, what: str, exc: Exception) -> None:
    """A background pass failed and runs again later: a WARNING -- unless it was refused at the
    database cap, which ``putplace_shed_total`` counts already and an overload would otherwise
    log once per pass."""
    if not isinstance(exc, Overloaded):
        log.warning("%s: %s", what, exc)


class ErrorDetail(BaseModel):
    """The body of every error response but 422 (FastAPI's list of validation errors)."""

    detail: str = Field(description="what went wrong, in one sentence")


# Every error status the service answers with, documented once. The OpenAPI document must
# list what clients really receive, so routers and routes pick their entries from here.
_ERRORS: dict[int, str] = {
    400: "Malformed request: unparsable body, malformed sha256, cursor or multipart, or content not matching its hash",
    401: "Missing, unknown, revoked or expired API key",
    403: "The API key lacks the scope this operation needs, or the record named is outside its hosts and paths",
    404: "Nothing by that name",
    409: "Not what was announced: the content is stored already (nothing to upload), or has another size",
    413: "Request body larger than the server accepts, or storing it would exceed the API key's quota",
    415: "Content type not accepted",
    416: "Range not satisfiable",
    429: "Rate limit of this API key exceeded; retry after Retry-After seconds",
    503: "The database or the content storage does not answer, or this server is at its cap of database operations;"
    " retry after Retry-After seconds",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for these error statuses, each with the ``ErrorDetail`` body."""
    return {code: {"model": ErrorDetail, "description": _ERRORS[code]} for code in codes}


# What any key-protected route may answer before its handler runs: SecurityMiddleware's
# refusals, FastAPI's unparsable-body 400, and a backend outage. Given to each router.
KEYED_ROUTE_ERRORS = error_responses(400, 401, 403, 413, 429, 503)


def error_response(exc: PutPlaceError, retry_after: int | None = None) -> JSONResponse:
    """The JSON body every error has: ``{"detail": "..."}``, plus its headers."""
    headers = dict(exc.headers)
    if isinstance(exc, BackendUnavailable) and retry_after is not None:
        headers.setdefault("Retry-After", str(retry_after))
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


def validation_response(exc: RequestValidationError) -> Response:
    """FastAPI's 422 body, always valid JSON: the default handler echoes the rejected input,
    which fails to serialise (and becomes a 500) when that input is NaN or Infinity."""
    errors = jsonable_encoder(exc.errors())
    try:
        body = json.dumps({"detail": errors}, allow_nan=False)
    except ValueError:
        body = json.dumps({"detail": [{k: v for k, v in e.items() if k not in ("input", "ctx")} for e in errors]})
    return Response(body, status_code=422, media_type="application/json")
