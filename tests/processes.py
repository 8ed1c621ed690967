"""Real PutPlace processes for suites that need the service as deployed: ``ApiProcess`` runs
``putplace-api`` on 127.0.0.1 (agent tests stop it for a while and read the catalogue, operator
tests register keys at it); ``Agent`` runs ``putplace-agent sync`` (agent and fault tests stop,
kill and restart it); ``metric`` reads a counter from any process's /metrics."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from putplace_client.names import Name, to_bytes
from tests.api.conftest import ADMIN_KEY
from tests.servers.base import Process, free_ports, tail
from tests.waiting import wait_until

__all__ = ["Agent", "ApiProcess", "agent_factory", "metric", "summary_of"]


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

    @property
    def environ(self) -> dict[str, str]:
        """The API's settings, as its environment: what its maintenance commands need too."""
        return {
            "PUTPLACE_DATA_DIR": str(self.workdir / "data"),
            "PUTPLACE_ADMIN_KEY": ADMIN_KEY,
            "PUTPLACE_PORT": str(self.port),
            "PUTPLACE_LOG_LEVEL": "warning",
            **self.env,
        }

    def start(self) -> None:
        self.process = Process.spawn(
            "api", [sys.executable, "-m", "putplace_api.cli", *self.args], cwd=self.workdir,
            log_path=self.workdir / "api.log", env=self.environ,
        )  # fmt: skip
        self.process.wait_ready(self._healthy, timeout=30)

    def maintenance(self, *args: str) -> dict[str, Any]:
        """``putplace-api <args> --json`` (verify, gc) on this API's database and storage; its report."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PUTPLACE_")} | self.environ
        done = subprocess.run(
            [sys.executable, "-m", "putplace_api.cli", *args, "--json"],
            env=env, cwd=self.workdir, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, f"putplace-api {' '.join(args)}: exit {done.returncode}\n{done.stderr}"
        return dict(json.loads(done.stdout))

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

    def kill(self) -> None:
        """``kill -9``: no shutdown, no lifespan exit, whatever was in flight is cut."""
        if self.process is not None:
            self.process.kill()
            self.process = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "the API is not running"
        return self.process.pid

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": ADMIN_KEY}, timeout=30, verify=self.verify)

    def new_key(self, *scopes: str) -> str:
        with self.http() as c:
            r = c.post("/api_keys", json={"name": "agent", "scopes": list(scopes) or ["write"]})
            assert r.status_code == 201, r.text
            return str(r.json()["api_key"])

    def records(self, hostname: str | None = None) -> list[dict[str, Any]]:
        """Every current record (of one host, or of all), as GET /files shows them."""
        out: list[dict[str, Any]] = []
        cursor = None
        with self.http() as c:
            while True:
                params: dict[str, Any] = {"limit": 1000}
                if hostname is not None:
                    params["hostname"] = hostname
                if cursor:
                    params["cursor"] = cursor
                page = c.get("/files", params=params).raise_for_status().json()
                out.extend(page["items"])
                cursor = page["next_cursor"]
                if cursor is None:
                    return out

    def catalogue(self, hostname: str) -> dict[str, str]:
        """Current records of a host: file name -> sha256, a name as ``os.fsdecode`` gives it
        (the record's filepath itself unless it is escaped)."""
        return {
            os.fsdecode(to_bytes(Name(r["filepath"], r["filepath_escaped"]))): r["sha256"]
            for r in self.records(hostname)
        }

    def stats(self) -> dict[str, Any]:
        with self.http() as c:
            return dict(c.get("/stats").raise_for_status().json())

    def counter(self, name: str) -> float:
        """A metric of the API (summed over its labels; 0 when it has no sample yet)."""
        with self.http() as c:
            try:
                return metric(c.get("/metrics").raise_for_status().text, name)
            except KeyError:
                return 0.0

    def rss_bytes(self) -> int:
        return peak_rss(self.pid)


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

    def spawn(self) -> None:
        """Start ``sync`` in the background and return at once."""
        self.popen = subprocess.Popen(
            self.argv("--metrics-port", str(self.metrics_port)),
            env=self.environ(),
            stdout=subprocess.DEVNULL,
            stderr=self.log_path.open("ab"),
        )

    def start(self, *, wait_for_scan: bool = True) -> None:
        """Start ``sync`` in the background; return once its metrics answer and, by default,
        once its first scan is done."""
        self.spawn()
        wait_until(self._metrics_up, 30, "the agent's metrics endpoint")
        if wait_for_scan:
            wait_until(self.scanned, 60, "a first scan")

    def scanned(self) -> bool:
        return bool(self.counter("putplace_agent_last_scan_completed_timestamp_seconds"))

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
        return peak_rss(self.popen.pid)


@contextmanager
def api_factory(parent: Path) -> Iterator[Callable[..., ApiProcess]]:
    """Starts ``ApiProcess``es, each in its own dir under ``parent`` (keyword arguments: its
    fields); all are stopped when the block ends."""
    started: list[ApiProcess] = []

    def start(**fields: Any) -> ApiProcess:
        api = ApiProcess(parent / f"api{len(started)}", **fields)
        api.workdir.mkdir(parents=True)
        started.append(api)
        api.start()
        return api

    try:
        yield start
    finally:
        for api in started:
            api.stop()


@contextmanager
def agent_factory(
    workdir: Path, api: ApiProcess | None = None, root: Path | None = None
) -> Iterator[Callable[..., Agent]]:
    """Makes ``Agent``s in ``workdir`` (keyword arguments: its fields, ``api`` and ``root``
    defaulting to the given ones); any agent still running when the block ends is killed."""
    agents: list[Agent] = []

    def make(**kwargs: Any) -> Agent:
        chosen_api, chosen_root = kwargs.pop("api", api), kwargs.pop("root", root)
        assert chosen_api is not None and chosen_root is not None, "an agent needs an api and a root"
        agent = Agent(chosen_api, chosen_root, workdir, **kwargs)
        agents.append(agent)
        return agent

    try:
        yield make
    finally:
        for agent in agents:
            if agent.popen is not None:
                agent.popen.kill()
                agent.popen.wait()


def summary_of(stderr: str) -> dict[str, Any]:
    for line in reversed(stderr.splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("message") in ("sync complete", "sync stopped"):
            return dict(record)
    return {}


def peak_rss(pid: int) -> int:
    """The peak resident set size of a running process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


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
