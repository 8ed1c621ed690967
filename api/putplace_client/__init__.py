"""PutPlace protocol client: wire models, a typed httpx client and its errors."""

from putplace_client.models import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyInfo,
    FileMetadata,
    FileRecord,
    PutFileResponse,
    Scope,
    Stats,
    UploadResponse,
)

__all__ = [
    "ApiKeyCreate",
    "ApiKeyCreated",
    "ApiKeyInfo",
    "FileMetadata",
    "FileRecord",
    "PutFileResponse",
    "Scope",
    "Stats",
    "UploadResponse",
]
