"""Wire models of the catalogue-browsing queries the web console makes (``routes/browse.py``).

Apart from ``models.py`` because they are read-only views for people, not part of the
agent's protocol; any client may still call them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from putplace_client.models import FileRecord, Scope

__all__ = ["WhoAmI", "NodeInfo", "TreeEntry"]


class WhoAmI(BaseModel):
    """The key a request was made with, as its holder may see it: never the key itself."""

    name: str
    scopes: list[Scope] = Field(description="admin implies every other scope")


class NodeInfo(BaseModel):
    hostname: str


class TreeEntry(BaseModel):
    name: str = Field(description="the last path segment")
    path: str = Field(description="the full path; a directory's ends with /")
    kind: Literal["dir", "file"]
    file: FileRecord | None = Field(None, description="a file's current record")
