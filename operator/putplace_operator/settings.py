"""The one settings object of the operator (``PUTPLACE_OPERATOR_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["OperatorSettings"]


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PUTPLACE_OPERATOR_", extra="ignore")

    reconcile_seconds: float = Field(
        30.0, gt=0, description="period of the full reconcile that repairs drift and refreshes status"
    )
