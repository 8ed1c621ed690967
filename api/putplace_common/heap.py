"""Garbage-collector settings for PutPlace's long-running processes (the API and the agent).

Why: once a process is ready, its imports and start-up (FastAPI, pydantic, botocore, the
routes and the settings) have left ~90,000 container objects that live as long as the process.
CPython's generational collector walks all of them on every full collection, and its default
young-generation threshold (700 allocations) collects every few requests. Measured on
``bench/put_file_rps.py`` with ``py-spy --native``: ``gc_collect_main`` was 8-16 % of the API's
samples, and these two settings cut a ``put_file``'s CPU by 15-25 % (the agent's CPU per
synced file by ~5 %).
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "settle_heap"]

# Allocations between young collections. Each one still walks at most this many objects
# (well under a millisecond); the older generations keep CPython's ratios.
YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Call once start-up is done: its objects leave every later collection, which run less often.

    Objects are not leaked by this: frozen ones are still freed by reference counting, and
    ``gc.unfreeze()`` would hand them back to the collector.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
