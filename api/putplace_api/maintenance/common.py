"""What verify and gc share: the backends opened from Settings, durations, progress lines."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio

from putplace_api.settings import Settings
from putplace_api.storage import ContentStorage, open_storage
from putplace_api.store import MetadataStore, open_store

__all__ = ["Backends", "Findings", "Progress", "batched", "bounded", "chunks", "opened", "parse_duration", "EXAMPLES"]

T = TypeVar("T")
EXAMPLES = 1000  # problems listed by name per kind; the counts are always complete
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in "30s", "15m", "24h", "7d" or plain seconds; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 15m, 24h, 7d or seconds)")
    return float(match.group(1)) * _UNIT[match.group(2)]


@dataclass(frozen=True, slots=True)
class Backends:
    store: MetadataStore
    storage: ContentStorage


@asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[Backends]:
    """The store and storage the server would use, opened and reachable (else BackendUnavailable).

    Storage first: a data directory with no content storage (a mistyped --data-dir) is refused
    before the database is opened, which would create it."""
    store, storage = open_store(settings), open_storage(settings, sweep_temps=False)
    try:
        await storage.open()
        await storage.ping()
        await store.open()
        await store.ping()
        yield Backends(store, storage)
    finally:
        await storage.close()
        await store.close()


async def batched(items: AsyncIterator[T], size: int) -> AsyncIterator[list[T]]:
    batch: list[T] = []
    async for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def bounded(items: Iterable[T], work: Callable[[T], Awaitable[None]], concurrency: int) -> None:
    """Run ``work`` on every item, at most ``concurrency`` at a time."""
    limit = anyio.Semaphore(concurrency)

    async def one(item: T) -> None:
        async with limit:
            await work(item)

    async with anyio.create_task_group() as group:
        for item in items:
            group.start_soon(one, item)


@dataclass
class Findings(Generic[T]):
    """One kind of finding: complete counts, and the first EXAMPLES by name (bounded memory)."""

    count: int = 0
    bytes: int = 0
    items: list[T] = field(default_factory=list)

    def add(self, item: T, size: int = 0) -> None:
        self.count += 1
        self.bytes += size
        if len(self.items) < EXAMPLES:
            self.items.append(item)

    def __bool__(self) -> bool:
        return self.count > 0


@dataclass
class Progress:
    """A log line every ``every`` seconds on long runs (stderr, the one logging setup)."""

    what: str
    every: float = 5.0
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("putplace.maintenance"))
    _last: float = field(default_factory=time.monotonic)

    def tick(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self.log.info(f"{self.what}: {message}", *args)
