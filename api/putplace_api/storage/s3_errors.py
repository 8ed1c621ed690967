"""What S3 errors mean to PutPlace: gone (a missing key or upload), or storage unavailable."""

from __future__ import annotations

from botocore.exceptions import ClientError

from putplace_api.errors import BackendUnavailable

__all__ = ["code", "is_missing", "unavailable"]

_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}


def code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code"))


def is_missing(exc: ClientError) -> bool:
    return code(exc) in _MISSING


def unavailable(exc: Exception) -> BackendUnavailable:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return BackendUnavailable("storage", f"{err.get('Code')}: {err.get('Message')}")
    return BackendUnavailable("storage", type(exc).__name__)
