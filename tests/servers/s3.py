"""What a test needs to talk to an S3 server (SeaweedFS or MinIO), and the S3 readiness check.

``S3Server`` is the value of the ``seaweedfs`` and ``minio`` pytest fixtures. It round-trips
through the ``PUTPLACE_TEST_<NAME>_ENDPOINT`` / ``_ACCESS_KEY`` / ``_SECRET_KEY`` variables, so
a server started by ``python -m tests.servers start`` (or any other S3 endpoint) can be reused.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .base import ENV_PREFIX, ServerError


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server (path-style addressing, no retries by default)."""
        import boto3
        from botocore.config import Config

        settings: dict[str, Any] = {
            "s3": {"addressing_style": "path"},
            "retries": {"max_attempts": 1, "mode": "standard"},
        }
        settings.update(config)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(**settings),
        )

    def create_bucket(self, prefix: str = "test") -> str:
        """Create a new, uniquely named, empty bucket and return its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:16]}".lower()
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, name: str) -> dict[str, str]:
        """The PUTPLACE_TEST_<NAME>_* variables describing this server."""
        key = f"{ENV_PREFIX}{name.upper()}"
        return {
            f"{key}_ENDPOINT": self.endpoint_url,
            f"{key}_ACCESS_KEY": self.access_key,
            f"{key}_SECRET_KEY": self.secret_key,
        }

    @classmethod
    def from_env(cls, name: str, environ: Mapping[str, str]) -> S3Server | None:
        """The server described by PUTPLACE_TEST_<NAME>_*, or None when the endpoint is unset."""
        key = f"{ENV_PREFIX}{name.upper()}"
        endpoint = environ.get(f"{key}_ENDPOINT")
        if not endpoint:
            return None
        missing = [v for v in (f"{key}_ACCESS_KEY", f"{key}_SECRET_KEY") if not environ.get(v)]
        if missing:
            raise ServerError(f"{key}_ENDPOINT is set but not {' and '.join(missing)}")
        return cls(endpoint, environ[f"{key}_ACCESS_KEY"], environ[f"{key}_SECRET_KEY"])


def s3_ready(server: S3Server) -> bool:
    """True once ``list_buckets`` succeeds with the server's credentials."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        server.client(connect_timeout=1, read_timeout=2).list_buckets()
    except (BotoCoreError, ClientError):
        return False
    return True
