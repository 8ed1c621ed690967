"""Durable file steps of local storage, shared by its uploads (``local.py``) and sessions
(``local_sessions.py``)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["rename_into_place"]


def rename_into_place(src: Path, final: Path, fsync: bool) -> None:
    """Give ``src`` (fsynced already, when ``fsync``) the name ``final``, atomically, and make
    the new name durable. An identical content renamed there concurrently just wins or loses."""
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, final)
    if fsync:
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
