"""Waiting on a condition with a deadline (never a bare sleep), for every test suite."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T | None], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy, and return that; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    # Quick for fast checks, then gentler on slow ones (a kubectl call is a process), but never
    # coarser than a twentieth of the timeout, so a deadline keeps its meaning.
    pause, longest = 0.05, max(0.05, min(0.5, timeout / 20))
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 1.5, longest)
