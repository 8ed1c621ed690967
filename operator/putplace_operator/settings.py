"""The one settings object of the operator (``PUTPLACE_OPERATOR_*`` environment variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["OperatorSettings"]


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PUTPLACE_OPERATOR_", extra="ignore")

    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="namespaces to watch, comma-separated (globs allowed, e.g. team-*); empty = all namespaces",
    )
    reconcile_seconds: float = Field(
        30.0, gt=0, description="period of the full reconcile that repairs drift and refreshes status"
    )
    progress_seconds: float = Field(
        1.0, gt=0, description="how often the status of an instance that is not Ready yet is refreshed"
    )
    api_url_template: str | None = Field(
        None,
        description=(
            "how the operator reaches an instance's API, with {name}, {namespace} and {service} filled in; "
            "unset = the in-cluster Service URL. Set it when the operator runs outside the cluster "
            "(e.g. http://127.0.0.1:8000 through kubectl port-forward)"
        ),
    )
    api_timeout_seconds: float = Field(10.0, gt=0, description="timeout of one request to an instance's API")
    api_ca_bundle: Path | None = Field(
        None, description="PEM CA bundle trusted for instances' https APIs (default: the system's)"
    )
    rotation_grace_seconds: float = Field(
        3600.0, ge=0, description="how long a rotated-out key keeps working after spec.rotation was bumped"
    )
    retry_min_seconds: float = Field(2.0, gt=0, description="first delay before a failed reconcile is retried")
    retry_max_seconds: float = Field(300.0, gt=0, description="longest delay between retries (exponential backoff)")
    delete_retries: int = Field(
        6,
        ge=0,
        description="retries to revoke a deleted ApiKey's or instance's keys before its finalizer is released anyway",
    )
    liveness_port: int = Field(8080, ge=0, le=65535, description="port of the liveness endpoint /healthz (0 = off)")
    metrics_port: int = Field(9090, ge=0, le=65535, description="port of the Prometheus /metrics endpoint (0 = off)")
    bind_address: str = Field("0.0.0.0", description="address the liveness and metrics endpoints listen on")
    log_level: str = Field("info", description="debug, info, warning or error")
    log_format: str = Field("json", pattern="^(json|text)$", description="json (one object per line) or text")

    def backoff(self, retry: int) -> float:
        """Delay before retry number ``retry`` (0-based): doubling from the minimum, capped."""
        return float(min(self.retry_max_seconds, self.retry_min_seconds * 2 ** min(retry, 30)))

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
