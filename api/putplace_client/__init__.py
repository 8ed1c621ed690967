"""PutPlace protocol client: wire models, a typed httpx client and its errors.

Used by the agent and the operator alike; the API imports only the models.
"""

from putplace_client.client import PutPlaceClient
from putplace_client.errors import (
    AuthenticationError,
    CertificateError,
    ConflictError,
    ContentChanged,
    NotFoundError,
    PermissionDenied,
    PutPlaceClientError,
    RateLimited,
    ServerUnavailable,
    StatusError,
    TransportError,
)
from putplace_client.models import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyInfo,
    BatchUploadItem,
    FileMetadata,
    FileRecord,
    PutFileResponse,
    Scope,
    Stats,
    UploadResponse,
    UploadSession,
    UploadStatus,
)

__all__ = [
    "PutPlaceClient",
    "PutPlaceClientError",
    "CertificateError",
    "ContentChanged",
    "TransportError",
    "StatusError",
    "AuthenticationError",
    "PermissionDenied",
    "NotFoundError",
    "ConflictError",
    "RateLimited",
    "ServerUnavailable",
    "ApiKeyCreate",
    "ApiKeyCreated",
    "ApiKeyInfo",
    "FileMetadata",
    "FileRecord",
    "PutFileResponse",
    "Scope",
    "Stats",
    "UploadResponse",
    "UploadStatus",
    "UploadSession",
    "BatchUploadItem",
]
