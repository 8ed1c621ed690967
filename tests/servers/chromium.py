"""Debian's chromium, the real browser the web console's tests drive with Playwright.

Playwright's own browser download does not work here (and would pin a build nobody patches);
Debian's package is installed with apt instead and Playwright is pointed at it
(``executable_path``). apt installs the current version of bookworm's package.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .base import ServerError, apt_install

NAME = "chromium"
VERSION = "156"  # bookworm-security's chromium at the time of writing (apt installs the current one)
PACKAGES = ("chromium",)


def binary() -> Path:
    return Path(shutil.which("chromium") or "/usr/bin/chromium")


def install() -> Path:
    """apt-get install chromium unless it is there; return the browser's path."""
    if binary().is_file():
        return binary()
    apt_install("chromium", PACKAGES)
    if not binary().is_file():
        raise ServerError(f"apt-get install chromium did not install {binary()}")
    return binary()
