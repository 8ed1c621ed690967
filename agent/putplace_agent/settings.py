"""The one settings object of the agent.

Precedence, highest first: command-line flags, ``PUTPLACE_*`` environment variables (plus
``NODE_NAME`` from the Kubernetes downward API), a TOML config file (``--config``), defaults.
"""

from __future__ import annotations

import socket
import ssl
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["AgentSettings", "load_settings"]

_config_file: ContextVar[Path | None] = ContextVar("putplace_agent_config_file", default=None)


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PUTPLACE_", extra="ignore", populate_by_name=True)

    paths: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="comma-separated trees to sync (also positional arguments)"
    )
    server_url: str = Field("http://127.0.0.1:8000", description="PutPlace API base URL")
    ca_bundle: Path | None = Field(
        None, description="PEM file of the CA(s) that signed an https server's certificate (default: the system's)"
    )
    api_key: SecretStr | None = Field(None, description="API key with the write scope")
    api_key_file: Path | None = Field(None, description="file holding the API key (a mounted Secret)")
    node_name: str = Field(
        default_factory=socket.gethostname,
        validation_alias=AliasChoices("node_name", "PUTPLACE_NODE_NAME", "NODE_NAME"),
        description="hostname recorded in the catalogue (NODE_NAME from the downward API in Kubernetes)",
    )
    ip_address: str = Field(
        "",
        validation_alias=AliasChoices("ip_address", "PUTPLACE_IP_ADDRESS", "NODE_IP"),
        description="address recorded in the catalogue (NODE_IP from the downward API); default: resolved",
    )
    strip_prefix: Path | None = Field(
        None, description="where the node's root is mounted: /host/var/log/x is catalogued as /var/log/x"
    )
    state_dir: Path = Field(Path("putplace-agent-state"), description="the local index lives here; keep it")
    exclude: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated globs; one matches the path relative to its tree or any component of it",
    )
    skip: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="comma-separated directories never descended (absolute paths)"
    )
    follow_symlinks: bool = Field(False, description="hash what symlinks point to instead of the link itself")
    rescan_interval_seconds: float = Field(
        3600.0, ge=0, description="full rescan period, catches what the watcher missed (0 = never)"
    )
    hash_workers: int = Field(2, ge=1, le=64, description="threads hashing files")
    upload_concurrency: int = Field(4, ge=1, le=64, description="content uploads in flight")
    session_threshold_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="files larger than this go up in chunks through an upload session, resumed after a restart",
    )
    session_parallel_chunks: int = Field(4, ge=1, le=32, description="chunks of one upload session in flight")
    batch_size: int = Field(1000, ge=1, le=10_000, description="records per POST /put_files")
    batch_linger_seconds: float = Field(0.05, ge=0, description="how long a partial batch waits for more records")
    retry_for_seconds: float = Field(
        600.0, gt=0, description="how long one request is retried before its work waits for the next pass"
    )
    drain_seconds: float = Field(20.0, ge=0, description="on SIGTERM, how long in-flight work may finish")
    request_timeout_seconds: float = Field(30.0, gt=0, description="HTTP timeout per request")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="serve Prometheus metrics on this port")
    metrics_host: str = Field("127.0.0.1", description="address for the metrics endpoint (0.0.0.0 in a pod)")
    progress_interval_seconds: float = Field(10.0, gt=0, description="period of progress log lines")
    log_level: str = Field("info", description="debug, info, warning, error")
    log_format: Literal["json", "text"] = Field("json", description="json for machines, text for people")

    @field_validator("paths", "exclude", "skip", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("ca_bundle")
    @classmethod
    def _loadable_ca_bundle(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                ssl.create_default_context(cafile=str(value))
            except (OSError, ssl.SSLError) as exc:  # missing, unreadable, or no certificate in it
                raise ValueError(f"cannot load the CA bundle {value}: {exc.strerror or exc}") from None
        return value

    @model_validator(mode="after")
    def _read_key_file(self) -> AgentSettings:
        if self.api_key is None and self.api_key_file is not None:
            try:
                key = self.api_key_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"cannot read the API key file {self.api_key_file}: {exc.strerror}") from None
            if not key:
                raise ValueError(f"the API key file {self.api_key_file} is empty")
            self.api_key = SecretStr(key)
        if not self.ip_address:
            self.ip_address = _resolve_ip(self.node_name)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        config_file = _config_file.get()
        if config_file is not None:
            sources += (TomlConfigSettingsSource(settings_cls, toml_file=config_file),)
        return sources

    @property
    def identity(self) -> str:
        """What the local index is an index *of*: the same files at another server or node are new work."""
        return f"{self.server_url.rstrip('/')} node={self.node_name} strip={self.strip_prefix or ''}"

    def catalogue_path(self, local: str) -> str:
        """The path as the node sees it (``strip_prefix`` removed)."""
        if self.strip_prefix is None:
            return local
        prefix = str(self.strip_prefix).rstrip("/")
        if local == prefix:
            return "/"
        if prefix and local.startswith(prefix + "/"):
            return local[len(prefix) :]
        return local


def _resolve_ip(name: str) -> str:
    try:
        return socket.gethostbyname(name)
    except OSError:
        return "127.0.0.1"


def load_settings(config_file: Path | None = None, **overrides: Any) -> AgentSettings:
    """Build the settings; ``overrides`` are the command-line flags that were given."""
    if config_file is not None and not config_file.is_file():
        raise ValueError(f"config file {config_file} does not exist")
    token = _config_file.set(config_file)
    try:
        return AgentSettings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _config_file.reset(token)
