"""Real PutPlace processes for suites that need the service as deployed: ``ApiProcess`` runs
``putplace-api`` on 127.0.0.1 (agent tests stop it for a while and read the catalogue, operator
tests register keys at it); ``metric`` reads a counter from any process's /metrics."""

from __future__ import annotations

import ssl
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.api.conftest import ADMIN_KEY
from tests.servers.base import Process, free_ports

__all__ = ["ApiProcess", "metric"]


@dataclass
class ApiProcess:
    """``putplace-api`` on a fixed port and data dir, so it can be stopped and started again."""

    workdir: Path
    port: int = field(default_factory=lambda: free_ports(1)[0])
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)  # command-line arguments (none: serve by environment)
    ca_bundle: Path | None = None  # set when the API serves HTTPS (PUTPLACE_TLS_* in env)
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_bundle else 'http'}://127.0.0.1:{self.port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=self.ca_bundle) if self.ca_bundle else True

    def start(self) -> None:
        env = {
            "PUTPLACE_DATA_DIR": str(self.workdir / "data"),
            "PUTPLACE_ADMIN_KEY": ADMIN_KEY,
            "PUTPLACE_PORT": str(self.port),
            "PUTPLACE_LOG_LEVEL": "warning",
            **self.env,
        }
        self.process = Process.spawn(
            "api", [sys.executable, "-m", "putplace_api.cli", *self.args], cwd=self.workdir,
            log_path=self.workdir / "api.log", env=env,
        )  # fmt: skip
        self.process.wait_ready(self._healthy, timeout=30)

    @classmethod
    @contextmanager
    def running(cls, workdir: Path, **env: str) -> Iterator[ApiProcess]:
        """Started for the block, stopped after it."""
        api = cls(workdir, env=env)
        api.start()
        try:
            yield api
        finally:
            api.stop()

    def _healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=1, verify=self.verify).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": ADMIN_KEY}, timeout=30, verify=self.verify)

    def new_key(self, *scopes: str) -> str:
        with self.http() as c:
            r = c.post("/api_keys", json={"name": "agent", "scopes": list(scopes) or ["write"]})
            assert r.status_code == 201, r.text
            return str(r.json()["api_key"])

    def catalogue(self, hostname: str) -> dict[str, str]:
        """Current records of a host: filepath -> sha256."""
        out: dict[str, str] = {}
        cursor = None
        with self.http() as c:
            while True:
                params: dict[str, Any] = {"hostname": hostname, "limit": 1000}
                if cursor:
                    params["cursor"] = cursor
                page = c.get("/files", params=params).raise_for_status().json()
                out.update({i["filepath"]: i["sha256"] for i in page["items"]})
                cursor = page["next_cursor"]
                if cursor is None:
                    return out

    def stats(self) -> dict[str, Any]:
        with self.http() as c:
            return dict(c.get("/stats").raise_for_status().json())


def metric(text: str, name: str) -> float:
    """Sum of every sample of ``name`` (all label sets) in a Prometheus text exposition."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    if not found:
        raise KeyError(name)
    return total
