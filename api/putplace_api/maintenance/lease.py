"""One ``gc --delete`` at a time, across processes and hosts: a named lease in the database.

Two gc runs at once could lose content: one restores a record into a pack (its own
``restore_contents``) that the other has just found unused and deletes. So a deleting run takes
the lease first, renews it in the background while it runs, and releases it at the end; a run
killed on the way leaves a lease that runs out ``LEASE_SECONDS`` later.

A run that could not renew in time (the database away, the process paused) may have been
overtaken by another. It checks before each step (``Held.check``) and stops there with
``LeaseLost``: every step it began, it finished; the next holder starts from what is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from putplace_api.store.base import LeaseStore

__all__ = ["LEASE_SECONDS", "Held", "LeaseBusy", "LeaseError", "LeaseLost", "exclusive"]

log = logging.getLogger(__name__)

LEASE_SECONDS = 120.0  # renewed every sixth of it


class LeaseError(Exception):
    """The run may not go on: another holds the lease, or this run lost it."""


class LeaseBusy(LeaseError):
    def __init__(self, name: str, seconds: float) -> None:
        super().__init__(
            f"another {name} --delete is running (it holds the {name!r} lease in the database); "
            f"run one at a time (a killed run's lease runs out {seconds:.0f} s after it stopped)"
        )


class LeaseLost(LeaseError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"{name} stopped: it could not renew its lease in time (the database was unreachable or "
            "the process paused); every step it began it finished -- run it again"
        )


@dataclass
class Held:
    name: str
    seconds: float
    valid_until: float  # time.monotonic() at which our last successful take runs out
    lost: bool = False

    def check(self) -> None:
        """Raise LeaseLost unless the lease is ours for long enough to begin a step.

        A step starts only with half the lease left: a step (a batch of deletions, one repacked
        pack) takes seconds, so it ends long before anyone else may take the lease."""
        if self.lost or time.monotonic() > self.valid_until - self.seconds / 2:
            raise LeaseLost(self.name)


@asynccontextmanager
async def exclusive(store: LeaseStore, name: str, seconds: float = LEASE_SECONDS) -> AsyncIterator[Held]:
    """Hold lease ``name`` for the duration of the block (LeaseBusy if another holds it)."""
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # who, for a human reading the table
    started = time.monotonic()
    now = datetime.now(UTC)
    if not await store.take_lease(name, holder, now, now + timedelta(seconds=seconds)):
        raise LeaseBusy(name, seconds)
    held = Held(name, seconds, started + seconds)
    renewing = asyncio.create_task(_renew(store, holder, held))
    try:
        yield held
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing
        if not held.lost:
            try:
                await store.release_lease(name, holder)
            except Exception as exc:  # the run's result stands; the lease runs out on its own
                log.warning("could not release the %s lease (it runs out within %.0f s): %s", name, seconds, exc)


async def _renew(store: LeaseStore, holder: str, held: Held) -> None:
    seconds = held.seconds
    while True:
        await asyncio.sleep(seconds / 6)
        asked = time.monotonic()
        now = datetime.now(UTC)
        try:
            taken = await store.take_lease(held.name, holder, now, now + timedelta(seconds=seconds))
        except Exception as exc:  # tried again at the next tick; check() stops the run if it lasts
            log.warning("could not renew the %s lease: %s", held.name, exc)
            continue
        if not taken:
            held.lost = True  # another took it after ours ran out
            return
        held.valid_until = asked + seconds
