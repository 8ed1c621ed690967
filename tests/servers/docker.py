"""A real Docker engine for the tests that build and run the project's images.

Debian's ``docker.io`` (dockerd 20.10, its own containerd and runc) is installed with apt when
``dockerd`` is missing. ``start()`` runs dockerd on a fixed socket, ``/run/putplace/docker.sock``,
with its data root in the cache (``<cache>/docker``): images outlive the engine, so the base
image and the built images are the cache (``images.py`` builds them). One engine per machine:
when that socket already answers (a dockerd started by hand with the same flags, or by
``python -m tests.servers start docker``), ``start()`` reuses it and its ``stop()`` leaves it
running, since two dockerds would fight over iptables and the bridge.

What a test gets is ``DockerEngine``: the ``DOCKER_HOST`` URL plus ``docker(*args)`` to run the
CLI against it. ``PUTPLACE_TEST_DOCKER_HOST`` points the fixture at a running engine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import runc_bounded
from .base import ENV_PREFIX, Process, Server, ServerError, apt_install, cache_dir, progress

NAME = "docker"
VERSION = "20.10.24"  # what Debian bookworm's docker.io gives (apt installs the current one)
PACKAGES = ("docker.io", "debootstrap")  # debootstrap makes the base image (images.py)

ENV_HOST = f"{ENV_PREFIX}DOCKER_HOST"
RUN = Path("/run/putplace")
SOCKET = RUN / "docker.sock"
PIDFILE = RUN / "docker.pid"
EXEC_ROOT = RUN / "docker-exec"
HOST = f"unix://{SOCKET}"


def data_root() -> Path:
    return cache_dir() / "docker"


def binary() -> Path:
    found = shutil.which("dockerd") or "/usr/sbin/dockerd"
    return Path(found)


def _cli() -> str:
    cli = shutil.which("docker")
    if cli is None:
        raise ServerError("the docker command line is not on PATH (apt-get install docker.io)")
    return cli


def install() -> Path:
    """apt-get install docker.io and debootstrap unless dockerd, docker and debootstrap are there."""
    if binary().is_file() and shutil.which("docker") and shutil.which("debootstrap"):
        return binary()
    apt_install("dockerd", PACKAGES)
    if not binary().is_file():
        raise ServerError(f"apt-get install {' '.join(PACKAGES)} did not install {binary()}")
    return binary()


@dataclass(frozen=True)
class DockerEngine:
    """A running engine as a test sees it: its ``DOCKER_HOST`` and the CLI pointed at it."""

    host: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DockerEngine | None:
        """The engine named by PUTPLACE_TEST_DOCKER_HOST, or None if unset; it must answer."""
        host = env.get(ENV_HOST)
        if not host:
            return None
        engine = cls(host)
        if not engine.answers():
            raise ServerError(f"{ENV_HOST}={host}: no Docker engine answers there (stale `tests.servers env`?)")
        return engine

    def env(self) -> dict[str, str]:
        """Variables for a docker (or kind) subprocess: this engine, the legacy builder."""
        return {"DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "0"}

    def docker(
        self, *args: str, input: str | bytes | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this engine; with ``check``, a failure raises with its stderr."""
        result = subprocess.run(
            [_cli(), *args],
            input=input.encode() if isinstance(input, str) else input,
            capture_output=True,
            env={**os.environ, **self.env()},
            timeout=timeout,
            check=False,
        )
        completed = subprocess.CompletedProcess(
            result.args,
            result.returncode,
            result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace"),
        )
        if check and result.returncode != 0:
            raise ServerError(
                f"`docker {' '.join(args[:3])}` failed (exit {result.returncode}): {completed.stderr.strip()[-500:]}"
            )
        return completed

    def answers(self) -> bool:
        try:
            return self.docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=10).returncode == 0
        except (subprocess.TimeoutExpired, ServerError):
            return False


def _running_daemon(log_path: Path) -> Process:
    """The dockerd already serving our socket, as a Process (for its pid; it is not ours)."""
    try:
        pid = int(PIDFILE.read_text().strip())
        executable = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except (OSError, ValueError):
        pid, executable = 0, str(binary())
    return Process(NAME, pid, executable, log_path, signal_group=False)


def start(workdir: Path, *, log_path: Path | None = None, timeout: float = 60.0) -> Server:
    """Start dockerd on ``/run/putplace/docker.sock`` (or reuse the one answering there).

    ``workdir`` holds nothing: the data root is the cache's, so images persist between runs.
    Stopping it sends SIGTERM to dockerd alone, which stops its containers (10 s each at most)
    and its containerd before it exits.
    """
    engine = DockerEngine(HOST)
    log_path = log_path or workdir / f"{NAME}.log"
    env = {ENV_HOST: HOST}
    if engine.answers():
        progress(f"reusing the Docker engine already answering on {SOCKET}")
        return Server(NAME, _running_daemon(log_path), workdir, env, reused=True)
    install()
    RUN.mkdir(parents=True, exist_ok=True)
    data_root().mkdir(parents=True, exist_ok=True)
    argv = [
        str(binary()),
        f"--data-root={data_root()}",
        f"--exec-root={EXEC_ROOT}",
        f"--pidfile={PIDFILE}",
        f"-H={HOST}",
        "--storage-driver=overlay2",
    ]
    if runc_bounded.missing():  # a privileged container (a kind node) could not start otherwise
        argv += [f"--add-runtime=bounded={Path(runc_bounded.__file__)}", "--default-runtime=bounded"]
    process = Process.spawn(NAME, argv, cwd=workdir, log_path=log_path, stop_grace=60.0, signal_group=False)
    process.wait_ready(engine.answers, timeout=timeout)
    return Server(NAME, process, workdir, env)


@contextmanager
def engine_for_install() -> Iterator[DockerEngine]:
    """The engine at the fixed socket for an install step (images, kind): the one running, or
    one started for the occasion and stopped again afterwards."""
    with tempfile.TemporaryDirectory(prefix="putplace-docker-") as tmp:
        server = start(Path(tmp))
        try:
            yield DockerEngine(server.env[ENV_HOST])
        finally:
            server.stop()
