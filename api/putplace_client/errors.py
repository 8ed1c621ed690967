"""Errors raised by the PutPlace client. One root, transport apart from status::

    PutPlaceClientError
    ├── ContentChanged            a file being uploaded is no longer what was announced
    ├── CertificateError          the server's TLS certificate is not trusted (no retry helps)
    ├── TransportError            the server could not be reached (connect, read, timeout)
    └── StatusError               the server answered with an error status
        ├── AuthenticationError   401
        ├── PermissionDenied      403
        ├── NotFoundError         404
        ├── ConflictError         409 (an upload session for content stored already)
        ├── RateLimited           429 (retry_after)
        └── ServerUnavailable     503 (retry_after)

httpx exceptions are translated at one boundary (``PutPlaceClient._send``).
"""

from __future__ import annotations

import httpx

__all__ = [
    "PutPlaceClientError",
    "ContentChanged",
    "CertificateError",
    "TransportError",
    "StatusError",
    "AuthenticationError",
    "PermissionDenied",
    "NotFoundError",
    "ConflictError",
    "RateLimited",
    "ServerUnavailable",
    "status_error",
]


class PutPlaceClientError(Exception):
    pass


class ContentChanged(PutPlaceClientError):
    pass


class CertificateError(PutPlaceClientError):
    """Not a TransportError: retrying cannot help until the CA bundle (or the server) changes."""


class TransportError(PutPlaceClientError):
    pass


class StatusError(PutPlaceClientError):
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status_code = response.status_code
        try:
            detail = response.json().get("detail")
        except (ValueError, AttributeError):
            detail = None
        self.detail = detail if detail is not None else response.text[:200]
        super().__init__(f"{response.status_code} {response.request.method} {response.request.url.path}: {self.detail}")

    @property
    def retry_after(self) -> float | None:
        value = self.response.headers.get("retry-after")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None


class AuthenticationError(StatusError):
    pass


class PermissionDenied(StatusError):
    pass


class NotFoundError(StatusError):
    pass


class ConflictError(StatusError):
    """409: e.g. an upload session for a content stored already."""


class RateLimited(StatusError):
    pass


class ServerUnavailable(StatusError):
    pass


_BY_STATUS: dict[int, type[StatusError]] = {
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFoundError,
    409: ConflictError,
    429: RateLimited,
    503: ServerUnavailable,
}


def status_error(response: httpx.Response) -> StatusError:
    return _BY_STATUS.get(response.status_code, StatusError)(response)
