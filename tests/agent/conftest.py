"""Fixtures for agent tests: a real API process and real agent processes on 127.0.0.1.

Both run as separate processes (``python -m …``), exactly as deployed, so a test can stop the
API for a while, SIGTERM an agent mid-upload, or read an agent's counters from its /metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.processes import Agent, ApiProcess, agent_factory, metric, summary_of

__all__ = ["Agent", "ApiProcess", "metric", "summary_of"]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    return root


@pytest.fixture
def make_agent(api_process: ApiProcess, tree: Path, tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    with agent_factory(tmp_path, api_process, tree) as make:
        yield make
