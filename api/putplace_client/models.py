"""Wire models of the PutPlace protocol.

Shared by the API (which validates requests with them), the agent and the operator
(which build requests with them), so a protocol change fails on both sides at once.
Nothing here imports server code.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    StrictBool,
    field_validator,
    model_validator,
)

from putplace_client import names

__all__ = [
    "SHA256_RE",
    "Sha256",
    "Scope",
    "FileMetadata",
    "FileRecord",
    "PutFileResponse",
    "PutFilesRequest",
    "PutFileResult",
    "PutFilesResponse",
    "UploadResponse",
    "UploadStatus",
    "BatchUploadItem",
    "BatchUploadResponse",
    "HistoryRecord",
    "Page",
    "DeleteFileResponse",
    "Stats",
    "ApiKeyCreate",
    "ApiKeyInfo",
    "ApiKeyCreated",
    "MessageResponse",
    "DateTime",
    "escape_path",
    "is_sha256",
]

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_PATH_BYTES = 4096  # PATH_MAX on Linux


def is_sha256(value: str) -> bool:
    return SHA256_RE.fullmatch(value) is not None


def escape_path(value: str) -> str:
    """A string that may hold lone surrogates as text for display: each undecodable byte as the
    four characters ``\\xNN`` (``bytes.decode(errors="backslashreplace")``); valid text as it is.

    Not injective (the text ``\\xe9`` looks the same): file names are stored as a pair
    (``putplace_client.names``); this is for log lines, and for host names, which are DNS names.
    """
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        try:
            raw = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # surrogates that are not escaped bytes
            raw = value.encode("utf-8", "surrogatepass")
        return raw.decode("utf-8", "backslashreplace")


def _escape_any(value: object) -> object:
    return escape_path(value) if isinstance(value, str) else value


def _check_path(value: str) -> str:
    if "\x00" in value:
        raise ValueError("path must not contain a NUL character")
    # Lone surrogates (a Python client's undecodable bytes) count as the bytes they stand for.
    if len(value.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise ValueError(f"path is longer than {MAX_PATH_BYTES} bytes")
    return value


def _check_host(value: str) -> str:
    if "\x00" in value:
        raise ValueError("hostname must not contain a NUL character")
    return value


# Bounds keep every value storable as a 64-bit integer (SQLite, BSON) and every float valid JSON.
INT64_MAX = 2**63 - 1
UINT32_MAX = 2**32 - 1
INT32_MIN = -(2**31)


def _json_number(value: object) -> object:
    # Lax pydantic would store `false` as 0 and "12" as 12; the protocol says numbers.
    if isinstance(value, bool | str | bytes):
        raise ValueError("expected a number")
    return value


Float = Annotated[float, BeforeValidator(_json_number)]
Int = Annotated[int, BeforeValidator(_json_number)]
Timestamp = Annotated[Float, Field(allow_inf_nan=False)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="64 lowercase hex digits")]
# The NUL rule is documented in the schema and enforced by the validators (clearer messages).
_NO_NUL = {"pattern": "^[^\\u0000]*$"}
FilePath = Annotated[
    str,
    Field(
        min_length=1,
        json_schema_extra=_NO_NUL,
        description=f"the file name: verbatim, or its escaped form when filepath_escaped; "
        f"at most {MAX_PATH_BYTES} bytes in UTF-8, no NUL",
    ),
    AfterValidator(_check_path),
]
FilePathEscaped = Annotated[
    StrictBool,
    Field(
        description="true: the name is not valid UTF-8 and filepath is its escaped form "
        "(a backslash as \\\\, each byte that is not UTF-8 as \\xNN)"
    ),
]
HostName = Annotated[
    str,
    BeforeValidator(_escape_any),
    Field(min_length=1, max_length=255, json_schema_extra=_NO_NUL),
    AfterValidator(_check_host),
]


_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def _not_a_number(value: object) -> object:
    # pydantic reads 0 or "0.5" as seconds since the epoch; the protocol says RFC 3339.
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.match(value)):
        raise ValueError("expected an RFC 3339 date-time, e.g. 2025-01-31T12:00:00Z")
    return value


DateTime = Annotated[datetime, BeforeValidator(_not_a_number)]


class Scope(StrEnum):
    """What a key may do. ``admin`` implies every other scope."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"
    METRICS = "metrics"


class FileMetadata(BaseModel):
    """What a client announces about one file (``POST /put_file``)."""

    # Unknown fields -- and server-owned ones such as has_file_content -- are dropped.
    model_config = ConfigDict(extra="ignore")

    filepath: FilePath
    filepath_escaped: FilePathEscaped = False
    hostname: HostName
    ip_address: str = Field(max_length=64)
    sha256: Sha256
    file_size: Int = Field(ge=0, le=INT64_MAX)
    file_mode: Int = Field(ge=0, le=UINT32_MAX)
    file_uid: Int = Field(ge=INT32_MIN, le=UINT32_MAX)
    file_gid: Int = Field(ge=INT32_MIN, le=UINT32_MAX)
    file_mtime: Timestamp
    file_atime: Timestamp
    file_ctime: Timestamp

    @model_validator(mode="before")
    @classmethod
    def _surrogates(cls, data: object) -> object:
        # Lone surrogates (a Python client's undecodable bytes) are no valid str to pydantic:
        # such a name becomes its escaped form first. An escaped form holds none (MalformedName).
        if isinstance(data, dict):
            path = data.get("filepath")
            if isinstance(path, str) and not path.isascii() and data.get("filepath_escaped") is not True:
                try:
                    path.encode("utf-8")
                except UnicodeEncodeError:
                    data = {**data, "filepath": names.from_text(path).filepath, "filepath_escaped": True}
        return data

    @model_validator(mode="after")
    def _canonical_name(self) -> Self:
        # An escaped form standing for valid UTF-8 becomes the plain name, hex digits become
        # lower case: one stored pair per byte string.
        if self.filepath_escaped:
            try:
                name = names.canonical(self.filepath, True)
            except names.MalformedName as exc:
                raise ValueError(f"filepath is not a valid escaped name: {exc}") from None
            if name.filepath != self.filepath:
                _check_path(name.filepath)
            self.filepath, self.filepath_escaped = name
        return self


class FileRecord(FileMetadata):
    """The current record of one (hostname, filepath), as the server returns it."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str = Field(alias="_id")
    created_at: datetime
    updated_at: datetime
    has_file_content: bool
    file_uploaded_at: datetime | None = None
    storage_path: str | None = None


class PutFileResponse(FileRecord):
    upload_required: bool
    upload_url: str | None = None


class PutFilesRequest(BaseModel):
    files: list[FileMetadata] = Field(min_length=1, max_length=10_000)


class PutFileResult(BaseModel):
    """One record of a batch answer: what an agent needs to decide on uploads, no echo."""

    model_config = ConfigDict(populate_by_name=True)

    id: str = Field(alias="_id")
    hostname: str
    filepath: str
    filepath_escaped: bool = False
    sha256: str
    upload_required: bool
    upload_url: str | None = None


class PutFilesResponse(BaseModel):
    files: list[PutFileResult] = Field(description="one result per record sent, in the same order")


class HistoryRecord(FileRecord):
    """An earlier version of a path: replaced by a newer one, or deleted."""

    superseded_at: datetime
    event: str = Field(description='"replaced" or "deleted"')


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; null at the end")


class UploadResponse(BaseModel):
    message: str
    sha256: str
    size: str
    hostname: str | None
    filepath: str | None
    filepath_escaped: bool = False
    status: str


class UploadStatus(StrEnum):
    UPLOADED = "uploaded"  # stored now
    EXISTS = "exists"  # already stored: nothing to do
    MISMATCH = "mismatch"  # the bytes do not hash to the part's sha256: nothing stored
    NOT_ANNOUNCED = "not_announced"  # no record (that this key may see) names this sha256: announce it first
    TOO_LARGE = "too_large"  # over the server's upload limit
    UNSUPPORTED_TYPE = "unsupported_type"  # outside the server's MIME allow-list
    INVALID = "invalid"  # the part's name is not a sha256
    QUOTA_EXCEEDED = "quota_exceeded"  # storing it would take the key over its max_files or max_bytes


class BatchUploadItem(BaseModel):
    sha256: str
    status: UploadStatus
    size: int = Field(description="bytes received for this part")


class BatchUploadResponse(BaseModel):
    files: list[BatchUploadItem] = Field(description="one result per part, in the order sent")


class DeleteFileResponse(BaseModel):
    message: str
    hostname: str
    filepath: str
    filepath_escaped: bool = False


class Stats(BaseModel):
    files: int = Field(description="current records")
    hosts: int
    contents_stored: int
    stored_bytes: int = Field(description="bytes kept in content storage, once per sha256")
    logical_bytes: int = Field(description="sum of file sizes over all current records")
    dedup_ratio: float = Field(description="logical_bytes / stored_bytes (1.0 when nothing is stored)")


MAX_RESTRICTIONS = 100  # entries per list of a key's hostnames or path_prefixes


def _check_prefix(value: str) -> str:
    """An absolute path prefix, kept without its trailing slash (but ``/``): matching is by whole
    components, so ``/var/log`` and ``/var/log/`` mean the same."""
    _check_path(value)
    if not value.startswith("/"):
        raise ValueError("a path prefix must be absolute (start with /)")
    return value.rstrip("/") or "/"


def _unique(values: list[str] | None) -> list[str] | None:
    return None if values is None else list(dict.fromkeys(values))


PathPrefix = Annotated[
    str,
    BeforeValidator(_escape_any),
    Field(min_length=1, json_schema_extra={"pattern": "^/[^\\u0000]*$"}, description="an absolute path"),
    AfterValidator(_check_prefix),
]
_RESTRICTION_LIST = Field(min_length=1, max_length=MAX_RESTRICTIONS)  # checked before repeats are dropped
_LIMITED = "Omit (or null) for no limit; an empty list is refused."


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    description: str | None = Field(None, max_length=1000)
    scopes: list[Scope] = Field(default_factory=lambda: [Scope.READ, Scope.WRITE], min_length=1)
    rate_limit: float | None = Field(None, gt=0, description="requests per second; null = the server default")
    rate_limit_burst: int | None = Field(None, ge=1, description="bucket size; null = max(1, rate_limit)")
    expires_at: DateTime | None = None
    hostnames: Annotated[list[HostName], _RESTRICTION_LIST, AfterValidator(_unique)] | None = Field(
        None,
        description="the hosts (exact names) whose records the key may announce, upload, read and delete. " + _LIMITED,
    )
    path_prefixes: Annotated[list[PathPrefix], _RESTRICTION_LIST, AfterValidator(_unique)] | None = Field(
        None,
        description="the paths the key may touch: each prefix and what lies under it, by whole components "
        "(/var/log takes /var/log/a, not /var/logs). " + _LIMITED,
    )
    max_bytes: int | None = Field(
        None, ge=1, le=INT64_MAX, description="bytes of content the key's uploads may store; null = no quota"
    )
    max_files: int | None = Field(
        None, ge=1, le=INT64_MAX, description="contents the key's uploads may store; null = no quota"
    )

    # A field validator, not the Float/Int types: inside "| None" those would print their bounds
    # as "gt"/"ge" in the JSON schema instead of exclusiveMinimum/minimum.
    @field_validator("rate_limit", "rate_limit_burst", "max_bytes", "max_files", mode="before")
    @classmethod
    def _numbers(cls, value: object) -> object:
        return _json_number(value)


class ApiKeyInfo(BaseModel):
    """A key as listed: never its secret."""

    model_config = ConfigDict(populate_by_name=True)

    id: str = Field(alias="_id")
    name: str
    description: str | None = None
    scopes: list[Scope]
    rate_limit: float | None = None
    rate_limit_burst: int | None = None
    key_prefix: str = Field(description="first characters of the key, to recognise it")
    created_at: datetime
    expires_at: datetime | None = None
    is_active: bool
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    hostnames: list[str] | None = None
    path_prefixes: list[str] | None = None
    max_bytes: int | None = None
    max_files: int | None = None
    used_bytes: int = Field(
        0, description="bytes of the contents this key's uploads stored first (max_bytes counts these)"
    )
    used_files: int = Field(0, description="contents this key's uploads stored first (max_files counts these)")


class ApiKeyCreated(ApiKeyInfo):
    api_key: str = Field(description="the key itself: shown this once, stored only as a hash")


class MessageResponse(BaseModel):
    message: str


# -- webhooks ------------------------------------------------------------------------------


class WebhookEvent(StrEnum):
    """What a webhook subscription can be told about."""

    FILE_UPLOADED = "file.uploaded"  # a content was stored (the upload named its file, if it did)
    FILE_DUPLICATE = "file.duplicate"  # a new or changed file record whose content was stored already
    FILE_DELETED = "file.deleted"  # a deletion notice
    UPLOAD_MISMATCH = "upload.mismatch"  # an upload refused: its bytes did not hash to its sha256
    CONTENT_CORRUPT = "content.corrupt"  # verify found stored content corrupt or missing


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[
        HttpUrl,
        Field(
            description="where events are POSTed: http:// or https://, at most 2083 characters",
            examples=["https://example.com/hook"],
        ),
    ]
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(WebhookEvent), min_length=1, description="the events wanted (default: all)"
    )
    description: str | None = Field(None, max_length=1000)


class WebhookInfo(BaseModel):
    """A subscription as listed: never its secret."""

    id: str
    url: str
    events: list[WebhookEvent]
    description: str | None = None
    created_at: datetime
    active: bool


class WebhookCreated(WebhookInfo):
    secret: str = Field(description="signs every delivery (X-PutPlace-Signature); shown only here")


class DeadLetter(BaseModel):
    """A delivery given up after its last retry; replaying sends it again."""

    id: str
    subscription_id: str
    event: WebhookEvent
    created_at: datetime
    attempts: int
    last_error: str | None = None
    payload: dict[str, Any] = Field(description="the body that was sent")


class ReplayResponse(BaseModel):
    replayed: int = Field(description="dead letters queued again")


__all__ += ["WebhookEvent", "WebhookCreate", "WebhookInfo", "WebhookCreated", "DeadLetter", "ReplayResponse"]


# -- upload sessions (chunked, resumable uploads of large contents) ------------------------

UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}$")
CHUNK_SHA256_HEADER = "X-Chunk-SHA256"  # optional on a chunk: the server refuses a chunk not hashing to it


class UploadSessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: Sha256
    size: int = Field(ge=1, description="the content's size in bytes, as announced by /put_file")


class UploadSession(BaseModel):
    """An upload session: the content is sent as ``chunks`` chunks of ``chunk_size`` bytes (the
    last one the rest), in any order, by ``PUT /uploads/{upload_id}/chunks/{n}`` (n from 0)."""

    upload_id: str
    sha256: str
    size: int
    chunk_size: int
    chunks: int
    held: list[int] = Field(description="the chunk numbers the server holds, ascending")
    expires_at: datetime = Field(description="when the session is discarded unless used again before")

    def missing(self) -> list[int]:
        held = set(self.held)
        return [n for n in range(self.chunks) if n not in held]

    def chunk_span(self, number: int) -> tuple[int, int]:
        """[start, end) of chunk ``number`` in the content."""
        start = number * self.chunk_size
        return start, min(self.size, start + self.chunk_size)


class ChunkReceived(BaseModel):
    upload_id: str
    number: int
    size: int


__all__ += ["UPLOAD_ID_RE", "CHUNK_SHA256_HEADER", "UploadSessionCreate", "UploadSession", "ChunkReceived"]
