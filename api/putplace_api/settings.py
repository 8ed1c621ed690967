"""The one settings object of the API service.

Read from ``PUTPLACE_*`` environment variables and a ``.env`` file; the CLI turns its flags
into the same variables so that every uvicorn worker sees one configuration.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PUTPLACE_", env_file=".env", extra="ignore")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    workers: int = Field(1, ge=1, description="uvicorn worker processes")
    tls_certfile: Path | None = Field(
        None, description="serve HTTPS with this PEM certificate (chain); needs PUTPLACE_TLS_KEYFILE"
    )
    tls_keyfile: Path | None = Field(None, description="the PEM private key of PUTPLACE_TLS_CERTFILE")
    data_dir: Path = Field(
        Path("putplace-data"), description="embedded database, local content and the generated admin key live here"
    )
    database_url: str | None = Field(
        None, description="sqlite:///path or mongodb://...; default sqlite:///<data_dir>/putplace.db"
    )
    database_timeout_seconds: float = Field(
        5.0, gt=0, description="how long a database call may wait for a server, a pooled connection or an answer"
    )
    database_connect_timeout_seconds: float = Field(
        2.0,
        gt=0,
        description="how long opening a connection to MongoDB (and its heartbeat) may take; at most the timeout above",
    )
    database_max_concurrency: int = Field(
        64,
        ge=0,
        description="database operations one API process runs at once; beyond it requests get 503 at once (0 = no cap)",
    )
    storage_url: str | None = Field(
        None, description="file:///path or s3://bucket/prefix; default file://<data_dir>/content"
    )
    storage_fsync: bool = Field(True, description="fsync local content before it becomes visible")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint, e.g. http://minio:9000 (unset = AWS)")
    s3_region: str | None = Field(None, description="S3 region")
    s3_access_key_id: SecretStr | None = Field(None, description="S3 access key (unset = the AWS credential chain)")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key")
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field("path", description="path style suits MinIO")
    admin_key: SecretStr | None = Field(
        None,
        description="bootstrap admin key; unset on first start = generate one and write it to <data_dir>/admin-key",
    )
    max_upload_bytes: int | None = Field(
        None, ge=0, description="largest accepted upload (413 above); unset = no limit"
    )
    upload_chunk_bytes: int = Field(
        8 * 1024 * 1024,
        ge=5 * 1024 * 1024,
        le=512 * 1024 * 1024,
        description="chunk size of upload sessions (S3 parts are >= 5 MiB); memory per chunk being received on S3",
    )
    upload_session_ttl_seconds: float = Field(
        24 * 3600.0, gt=0, description="an upload session unused for this long expires and its chunks are deleted"
    )
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest JSON request body (413 above)")
    allowed_mime_types: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated MIME allow-list for uploads (415 otherwise); empty = any"
    )
    rate_limit: float | None = Field(None, gt=0, description="default requests/second per key; unset = unlimited")
    rate_limit_burst: int | None = Field(None, ge=1, description="default burst per key; unset = max(1, rate_limit)")
    retry_after_seconds: int = Field(
        5,
        ge=1,
        description="Retry-After of a 503 when a backend is down; the least one when the database cap is reached",
    )
    retry_after_max_seconds: int = Field(
        60,
        ge=1,
        description="longest Retry-After at the database cap (it grows from retry_after_seconds with the refusals)",
    )
    webhook_max_attempts: int = Field(
        12, ge=1, description="delivery attempts of a webhook event before it becomes a dead letter"
    )
    webhook_backoff_seconds: float = Field(
        2.0, gt=0, description="wait after a webhook's first failed attempt; doubles after each one"
    )
    webhook_backoff_max_seconds: float = Field(900.0, gt=0, description="longest wait between two webhook attempts")
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="how long a webhook receiver may take to answer")
    webhook_poll_seconds: float = Field(1.0, gt=0, description="how often the delivery worker looks for due events")
    webhook_cache_seconds: float = Field(
        5.0, ge=0, description="how long a replica reuses the subscription list before re-reading it"
    )
    otlp_endpoint: str | None = Field(None, description="OTLP/HTTP traces endpoint; unset = tracing off")
    sync: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="comma-separated trees that a local putplace-agent, started beside the API, keeps catalogued",
    )
    log_level: str = Field("info", description="debug, info, warning, error")
    log_format: Literal["json", "text"] = Field("json", description="json for machines, text for people")

    @field_validator("allowed_mime_types", "sync", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("PUTPLACE_TLS_CERTFILE and PUTPLACE_TLS_KEYFILE go together: set both or neither")
        for path in (self.tls_certfile, self.tls_keyfile):
            if path is not None and not path.is_file():
                raise ValueError(f"{path} is not a readable file")
        if self.tls_certfile is not None and self.sync:
            # The local agent would call this server by 127.0.0.1, which its certificate rarely names.
            raise ValueError("PUTPLACE_SYNC does not work with TLS yet: run putplace-agent with --ca-bundle instead")
        return self

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'putplace.db').absolute()}"

    @property
    def effective_storage_url(self) -> str:
        return self.storage_url or f"file://{(self.data_dir / 'content').absolute()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
