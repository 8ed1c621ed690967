"""Showing progress: a rich progress bar on a terminal (``--once``), JSON log lines otherwise."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from putplace_agent.metrics import Tally

__all__ = ["report_progress", "use_progress_bar"]

log = logging.getLogger("putplace_agent.progress")


def use_progress_bar(once: bool) -> bool:
    return once and sys.stderr.isatty()


def _line(tally: Tally) -> str:
    return (
        f"files {tally.seen:,} seen · {tally.hashed:,} hashed · {tally.uploaded:,} uploaded"
        f" · {tally.unchanged + tally.deduplicated:,} skipped · {tally.failed:,} failed"
    )


async def report_progress(tally: Tally, *, bar: bool, interval: float, scanning: Callable[[], bool]) -> None:
    """Run until cancelled."""
    if not bar:
        while True:
            await asyncio.sleep(interval)
            log.info("progress", extra=tally.as_dict())
    console = Console(stderr=True)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("scanning", total=None)
        try:
            while True:
                progress.update(
                    task,
                    description=_line(tally),
                    # the total is known only once the scan is over: no ETA before that
                    total=None if scanning() else max(tally.bytes_to_hash, tally.bytes_hashed),
                    completed=tally.bytes_hashed,
                )
                await asyncio.sleep(0.2)
        finally:
            progress.update(task, description=_line(tally), total=tally.bytes_hashed, completed=tally.bytes_hashed)
