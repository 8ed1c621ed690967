"""Fixtures for agent tests: a real API process and real agent processes on 127.0.0.1.

Both run as separate processes (``python -m …``), exactly as deployed, so a test can stop the
API for a while, SIGTERM an agent mid-upload, or read an agent's counters from its /metrics.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import ADMIN_KEY
from tests.processes import ApiProcess, metric
from tests.servers.base import free_ports, tail
from tests.waiting import wait_until

__all__ = ["Agent", "ApiProcess", "metric", "summary_of"]


@dataclass
class Agent:
    """One ``putplace-agent sync`` with its own node name and state dir."""

    api: ApiProcess
    root: Path
    workdir: Path
    node: str = "node-a"
    key: str = ADMIN_KEY
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    metrics_port: int = field(default_factory=lambda: free_ports(1)[0])
    popen: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"agent-{self.node}.log"

    def argv(self, *more: str) -> list[str]:
        return [
            sys.executable, "-m", "putplace_agent", "sync", str(self.root), "--server", self.api.url,
            "--state-dir", str(self.workdir / f"state-{self.node}"), "--node-name", self.node,
            "--log-format", "json", *self.extra, *more,
        ]  # fmt: skip

    def environ(self) -> dict[str, str]:
        return {**os.environ, "PUTPLACE_API_KEY": self.key, **self.env}

    def once(self, *more: str, timeout: float = 600) -> tuple[int, dict[str, Any]]:
        """Run ``--once``; return its exit status and its final summary line."""
        r = subprocess.run(
            [*self.argv("--once", *more)], env=self.environ(), capture_output=True, timeout=timeout, text=True
        )
        self.log_path.open("a").write(r.stderr)
        summary = summary_of(r.stderr)
        return r.returncode, summary

    def start(self) -> None:
        self.popen = subprocess.Popen(
            self.argv("--metrics-port", str(self.metrics_port)),
            env=self.environ(),
            stdout=subprocess.DEVNULL,
            stderr=self.log_path.open("ab"),
        )
        wait_until(self._metrics_up, 30, "the agent's metrics endpoint")
        wait_until(lambda: self.counter("putplace_agent_last_scan_completed_timestamp_seconds"), 60, "a first scan")

    def _metrics_up(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            raise AssertionError(f"the agent exited with {self.popen.returncode}:\n{tail(self.log_path)}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def counter(self, name: str) -> float:
        try:
            return metric(self.metrics(), name)
        except KeyError:
            return 0.0

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.popen is not None
        self.popen.send_signal(sig)
        code = self.popen.wait(timeout)
        self.popen = None
        return code

    def rss_bytes(self) -> int:
        assert self.popen is not None
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):  # peak resident set size
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc/<pid>/status")


def summary_of(stderr: str) -> dict[str, Any]:
    for line in reversed(stderr.splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("message") in ("sync complete", "sync stopped"):
            return dict(record)
    return {}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    return root


@pytest.fixture
def make_agent(api_process: ApiProcess, tree: Path, tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def make(**kwargs: Any) -> Agent:
        agent = Agent(api_process, kwargs.pop("root", tree), tmp_path, **kwargs)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        if agent.popen is not None:
            agent.popen.kill()
            agent.popen.wait()
