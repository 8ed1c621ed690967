"""Content storage backends, chosen by URL scheme."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from putplace_api.settings import Settings
from putplace_api.storage.base import ContentStorage, ContentWriter

__all__ = ["ContentStorage", "ContentWriter", "open_storage"]


def open_storage(settings: Settings, *, sweep_temps: bool = True) -> ContentStorage:
    """The storage of ``settings``. ``sweep_temps=False`` (the maintenance commands): opening
    local storage leaves stale temp files to the server, so a run never touches an upload."""
    url = settings.effective_storage_url
    scheme = urlsplit(url).scheme
    if scheme == "file":
        from putplace_api.storage.local import LocalStorage

        return LocalStorage(unquote(urlsplit(url).path), fsync=settings.storage_fsync, sweep_temps=sweep_temps)
    if scheme == "s3":
        from putplace_api.storage.s3 import S3Storage

        secret = settings.s3_secret_access_key
        access = settings.s3_access_key_id
        return S3Storage(
            url,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=access.get_secret_value() if access else None,
            secret_access_key=secret.get_secret_value() if secret else None,
            addressing_style=settings.s3_addressing_style,
        )
    raise ValueError(f"PUTPLACE_STORAGE_URL must start with file:// or s3://, got {url!r}")
