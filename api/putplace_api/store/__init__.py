"""Metadata store backends, chosen by URL scheme."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from putplace_api.settings import Settings
from putplace_api.store.base import MetadataStore

__all__ = ["MetadataStore", "open_store"]


def open_store(settings: Settings) -> MetadataStore:
    url = settings.effective_database_url
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from putplace_api.store.sqlite import SqliteStore

        # sqlite:///relative/or/absolute (three slashes + path), sqlite:///:memory:
        path = unquote(url.split("://", 1)[1])
        path = path[1:] if path.startswith("/:memory:") else path
        return SqliteStore(path or ":memory:", timeout=settings.database_timeout_seconds)
    if scheme in ("mongodb", "mongodb+srv"):
        from putplace_api.store.mongo import MongoStore

        return MongoStore(
            url,
            timeout=settings.database_timeout_seconds,
            connect_timeout=settings.database_connect_timeout_seconds,
            max_pool=settings.database_max_concurrency or 100,  # pymongo's default without a cap
        )
    raise ValueError(f"PUTPLACE_DATABASE_URL must start with sqlite:// or mongodb://, got {url!r}")
