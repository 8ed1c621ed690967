"""One error hierarchy for the service, turned into JSON responses by one handler.

Routes and services raise these; backends translate their drivers' exceptions into
``BackendUnavailable`` at their own boundary, so no route knows pymongo or botocore.

    PutPlaceError
    ├── BadRequest (400)
    ├── Unauthorized (401)
    ├── Forbidden (403)
    ├── NotFound (404)
    ├── RangeNotSatisfiable (416)
    ├── PayloadTooLarge (413)
    ├── UnsupportedMediaType (415)
    ├── TooManyRequests (429)
    └── BackendUnavailable (503)
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.responses import JSONResponse, Response

__all__ = [
    "PutPlaceError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "RangeNotSatisfiable",
    "TooManyRequests",
    "BackendUnavailable",
    "error_response",
    "validation_response",
]


class PutPlaceError(Exception):
    status_code = 500

    def __init__(self, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})


class BadRequest(PutPlaceError):
    status_code = 400


class Unauthorized(PutPlaceError):
    status_code = 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail, {"WWW-Authenticate": "ApiKey"})


class Forbidden(PutPlaceError):
    status_code = 403


class NotFound(PutPlaceError):
    status_code = 404


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
