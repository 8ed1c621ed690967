"""Shared machinery for the real test servers: cache paths, Go builds, free ports, processes.

Everything here is server-agnostic. Each server module (ferretdb, seaweedfs, minio) uses it to
install its binary once into the cache and to run it as a child process on 127.0.0.1:

- ``cache_dir()``: where binaries, Go build modules and detached-run state live.
- ``go_build()``: builds a Go main package from the module proxy in a throwaway module.
- ``free_ports()``: picks unused TCP ports on 127.0.0.1.
- ``Process``: a server process in its own session, logging to a file, with a readiness wait
  bounded by a deadline and a SIGTERM-then-SIGKILL stop.
- ``Server``: what ``start()`` returns: the process plus the environment variables that point a
  test (or a shell) at it.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "PUTPLACE_TEST_"


class ServerError(RuntimeError):
    """An expected failure (missing tool, failed build, server not ready): one readable message."""


def progress(message: str) -> None:
    """Print one progress line to stderr (installs can take minutes)."""
    print(f"[test-servers] {message}", file=sys.stderr, flush=True)


def apt_install(missing: str, packages: tuple[str, ...]) -> None:
    """``apt-get install`` Debian packages (an ``apt-get update`` first if that fails); ``missing``
    names what is lacking, for the messages. apt's lock allows one user at a time: the install
    command keeps every caller of this in one lane (``tests/servers/__main__.py``)."""
    names = " ".join(packages)
    if shutil.which("apt-get") is None:
        raise ServerError(f"{missing} is missing and there is no apt-get to install {names} with")
    if os.geteuid() != 0:
        raise ServerError(f"{missing} is missing: installing it needs root (apt-get install {names})")
    progress(f"installing {names} with apt-get (about a minute)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["apt-get", *args], capture_output=True, text=True, env=env, timeout=900, check=False)

    got = apt("install", "-y", "--no-install-recommends", *packages)
    if got.returncode != 0:
        apt("update")
        got = apt("install", "-y", "--no-install-recommends", *packages)
    if got.returncode != 0:
        raise ServerError(f"apt-get install {names} failed: {got.stderr.strip()[-300:]}")


def unpack_debian_package(package: str, into: Path) -> None:
    """``apt-get download`` a pinned ``name=version`` and ``dpkg-deb -x`` it into ``into``:
    nothing is installed on the machine (an ``apt-get update`` first if the lists are empty)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise ServerError(f"cannot fetch {package}: apt-get and dpkg-deb are needed (a Debian or Ubuntu machine)")
    name = package.split("=", 1)[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # apt's download user writes here

        def apt(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["apt-get", *args], cwd=work, capture_output=True, text=True, timeout=600)

        got = apt("download", package)
        if got.returncode != 0:
            apt("update")
            got = apt("download", package)
        debs = list(work.glob(f"{name}_*.deb"))
        if got.returncode != 0 or not debs:
            raise ServerError(f"apt-get download {package} failed: {got.stderr.strip()[-500:]}")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(into)], check=True, timeout=120)


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Cache root: $PUTPLACE_CACHE_DIR, else $XDG_CACHE_HOME/putplace, else ~/.cache/putplace."""
    explicit = os.environ.get("PUTPLACE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "putplace"


def bin_dir(name: str, version: str) -> Path:
    return cache_dir() / "bin" / f"{name}-{version}"


def run_dir() -> Path:
    """State (pid files, logs) of servers started detached by ``python -m tests.servers start``."""
    return cache_dir() / "run"


def scratch_root() -> Path | None:
    """Parent for throwaway data dirs: /dev/shm if present (RAM-backed, fast), else system tmp."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


# --------------------------------------------------------------------------- Go builds


def go_build(
    *,
    name: str,
    version: str,
    module: str,
    module_version: str,
    package: str,
    binary: str,
    tags: Iterable[str] = (),
    ldflags: Iterable[str] = (),
    replace: Mapping[str, str] | None = None,
    prepare: Callable[[Path, Mapping[str, str]], None] | None = None,
    minutes: str = "a few",
) -> Path:
    """Build ``package`` from ``module@module_version`` into ``bin/<name>-<version>/<binary>``.

    Skips everything when the binary already exists. Uses a throwaway main module under
    ``build/<name>-<version>/`` (``go install pkg@version`` does not work with this machine's
    proxy), GOTOOLCHAIN=local and CGO_ENABLED=0. ``replace`` (module -> module@version or
    path) goes into that go.mod before ``go get`` (Kubernetes: its staging modules).
    ``prepare(build_dir, env)`` runs after ``go get`` and before ``go build`` (e.g. to patch the
    source through a ``replace``). ``ldflags`` are added after ``-s -w`` (e.g. ``-X`` version
    stamps). Several binaries may share one ``name``/``version`` (one build module, one bin dir).
    While a Go command runs, a progress line is printed every minute. The binary is written
    under a temporary name and renamed, so an interrupted build never looks installed.
    """
    target = bin_dir(name, version) / binary
    if target.is_file():
        return target
    go = shutil.which("go")
    if go is None:
        raise ServerError(
            f"cannot build {name} {version}: the Go toolchain is not on PATH "
            "(install Go >= 1.24 from https://go.dev/dl/ and put its bin directory on PATH)"
        )
    build = cache_dir() / "build" / f"{name}-{version}"
    build.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    log = build / "build.log"
    progress(f"building {binary} {version} with Go: {minutes} minutes on a cold Go cache; log: {log}")
    started = time.monotonic()
    with log.open("a") as out:

        def go_cmd(*args: str) -> None:
            out.write(f"$ go {' '.join(args)}\n")
            out.flush()
            step_started = time.monotonic()
            with subprocess.Popen(
                [go, *args],
                cwd=build,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            ) as child:
                while True:
                    try:
                        code = child.wait(timeout=60)
                        break
                    except subprocess.TimeoutExpired:
                        minutes_so_far = (time.monotonic() - step_started) / 60
                        progress(f"  still at `go {args[0]}` for {binary}: {minutes_so_far:.0f} min so far")
                    except BaseException:
                        child.kill()
                        raise
            if code != 0:
                raise ServerError(
                    f"building {name} failed at `go {' '.join(args)}` (exit {code}); last log lines: {tail(log, 8)}"
                )

        if not (build / "go.mod").is_file():
            go_cmd("mod", "init", f"local/{name}-build")
        if replace:
            go_cmd("mod", "edit", *(f"-replace={old}={new}" for old, new in replace.items()))
        go_cmd("get", f"{module}@{module_version}")
        if prepare is not None:
            prepare(build, env)
        partial = target.with_name(f".{binary}.partial")
        flags = ["-trimpath", "-ldflags", " ".join(["-s", "-w", *ldflags])]
        if tags:
            flags += ["-tags", ",".join(tags)]
        go_cmd("build", *flags, "-o", str(partial), package)
        partial.replace(target)
    progress(f"built {target} in {time.monotonic() - started:.0f} s")
    return target


def go_module_dir(build: Path, env: Mapping[str, str], module: str) -> Path:
    """Directory of ``module`` in the module cache, as resolved by the build module in ``build``."""
    result = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", module],
        cwd=build,
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise ServerError(f"`go list -m {module}` failed: {result.stderr.strip()}")
    return Path(result.stdout.strip())


# --------------------------------------------------------------------------- ports


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, also_free_at_offset: int = 0) -> list[int]:
    """``count`` distinct unused ports on 127.0.0.1.

    With ``also_free_at_offset`` (SeaweedFS: gRPC = http port + 10000) each returned port ``p``
    has ``p + offset`` unused too, and no returned port collides with another one's companion.
    There is an unavoidable window between choosing and binding; the ports come from a wide
    random range to keep parallel runs apart.
    """
    chosen: list[int] = []
    taken: set[int] = set()
    for _ in range(2000):
        if len(chosen) == count:
            return chosen
        if also_free_at_offset:
            port = random.randint(20000, 65535 - also_free_at_offset)
            wanted = {port, port + also_free_at_offset}
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            wanted = {port}
        if wanted & taken or not all(_bindable(p) for p in wanted):
            continue
        chosen.append(port)
        taken |= wanted
    raise ServerError(f"could not find {count} free TCP ports on 127.0.0.1")


# --------------------------------------------------------------------------- processes


def tail(path: Path, lines: int = 20) -> str:
    """Last ``lines`` lines of a log file, or a note that there is none."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    kept = text.rstrip().splitlines()[-lines:]
    return "\n".join(kept) if kept else f"(empty log {path})"


@dataclass
class Process:
    """A server process running in its own session (so a signal reaches its whole group)."""

    name: str
    pid: int
    executable: str
    log_path: Path
    stop_grace: float = 10.0  # seconds between SIGTERM and SIGKILL
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    # How it was spawned, so that ``respawn`` can start it again the same way (empty when the
    # process was found from a pid file rather than spawned).
    argv: list[str] = field(default_factory=list, repr=False)
    cwd: Path | None = field(default=None, repr=False)
    env: dict[str, str] = field(default_factory=dict, repr=False)
    user: str | None = field(default=None, repr=False)
    # False for a daemon that stops its own children (dockerd stops its containers, then its
    # containerd): SIGTERM goes to it alone, so its children are not cut off mid-shutdown.
    signal_group: bool = True

    @classmethod
    def spawn(
        cls,
        name: str,
        argv: list[str],
        *,
        cwd: Path,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        stop_grace: float = 10.0,
        user: str | None = None,
        signal_group: bool = True,
    ) -> Process:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=user,
            )
        return cls(
            name, popen.pid, argv[0], log_path, stop_grace, popen, list(argv), cwd, dict(env or {}), user, signal_group
        )

    def respawn(self) -> Process:
        """A new process started exactly as this one was (same arguments, so same port and data
        dir): fault tests stop a server and bring it back where its clients expect it."""
        if not self.argv or self.cwd is None:
            raise ServerError(f"{self.name} (pid {self.pid}) was not spawned here: cannot start it again")
        return Process.spawn(
            self.name,
            self.argv,
            cwd=self.cwd,
            log_path=self.log_path,
            env=self.env,
            stop_grace=self.stop_grace,
            user=self.user,
            signal_group=self.signal_group,
        )

    def kill(self) -> None:
        """SIGKILL the process group at once (a crash, not a shutdown) and reap it."""
        self._signal(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._reap()

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # A detached server is not our child: make sure the pid was not reused by something else,
        # and count a zombie (exited, waiting for a parent that may never reap it) as gone.
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            return False
        if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
            return False
        return cmdline.decode(errors="replace") == self.executable

    def wait_ready(self, check: Callable[[], bool], *, timeout: float) -> None:
        """Poll ``check`` until it returns True; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            if not self.alive():
                code = self.popen.returncode if self.popen is not None else "?"
                raise ServerError(
                    f"{self.name} exited (code {code}) before it was ready; log {self.log_path}:\n{tail(self.log_path)}"
                )
            if check():
                return
            if time.monotonic() >= deadline:
                self.stop()
                raise ServerError(
                    f"{self.name} was not ready after {timeout:.0f} s; log {self.log_path}:\n{tail(self.log_path)}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL it if still running after ``stop_grace`` s."""
        if not self.alive():
            self._reap()
            return
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.alive():
            self._signal(signal.SIGKILL)
            deadline = time.monotonic() + 5
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        self._reap()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.signal_group or sig == signal.SIGKILL:
                os.killpg(self.pid, sig)  # pgid == pid: spawned with start_new_session
            else:
                os.kill(self.pid, sig)

    def _reap(self) -> None:
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)


@dataclass
class Server:
    """A running server: its process, its data dir and the PUTPLACE_TEST_* variables for it.

    A server made of several processes (the Kubernetes control plane) lists the ones started
    after ``process`` in ``extra``; they are stopped first, in reverse order. Processes it runs
    on (FerretDB's PostgreSQL) are in ``backing``: started before it, stopped after it.
    A ``reused`` server was already running when ``start()`` was called (the Docker engine on
    its fixed socket): it is not ours, and ``stop()`` leaves it running.
    """

    name: str
    process: Process
    workdir: Path
    env: dict[str, str]
    extra: list[Process] = field(default_factory=list)
    backing: list[Process] = field(default_factory=list)
    reused: bool = False

    def stop(self) -> None:
        if self.reused:
            return
        stop_all([*self.backing, self.process, *self.extra])


def stop_all(processes: Iterable[Process]) -> None:
    """Stop processes in reverse start order (dependants before what they depend on)."""
    for process in reversed(list(processes)):
        process.stop()


def make_workdir(name: str, parent: Path | None = None) -> Path:
    """A fresh, empty data dir for one server (under /dev/shm when no parent is given).

    Its creator is recorded beside it, so that the dirs of a run killed before it could delete
    them (SIGKILL, a CI timeout) are deleted by the next one: /dev/shm is RAM, and a few killed
    runs would otherwise fill it and starve every later run (``sweep_stale_workdirs``)."""
    parent = parent or scratch_root()
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_workdirs(parent or Path(tempfile.gettempdir()))
    path = Path(tempfile.mkdtemp(prefix=f"putplace-{name}-", dir=parent))
    _owner_marker(path).write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
    return path


def remove_workdir(path: Path) -> None:
    """Delete a dir from ``make_workdir`` and its creator record."""
    shutil.rmtree(path, ignore_errors=True)
    _owner_marker(path).unlink(missing_ok=True)


def keep_workdir(path: Path) -> None:
    """Keep a dir from ``make_workdir`` after its creator exits (``--keep``): no sweep takes it."""
    _owner_marker(path).unlink(missing_ok=True)


@contextlib.contextmanager
def workdir(name: str, parent: Path | None = None) -> Iterator[Path]:
    """``make_workdir`` for the length of a ``with`` block, deleted at its end."""
    path = make_workdir(name, parent)
    try:
        yield path
    finally:
        remove_workdir(path)


def sweep_stale_workdirs(parent: Path) -> list[Path]:
    """Delete the ``make_workdir`` dirs under ``parent`` that nothing uses any more: their
    creator has exited and no process runs inside them. A detached server (``python -m
    tests.servers start``) outlives its creator but runs with its dir as working directory, so
    its dir stays. Returns what was deleted."""
    markers = list(parent.glob("putplace-*.owner"))
    if not markers or not Path("/proc/self/stat").exists():  # without /proc no owner can be told alive
        return []
    in_use = _working_directories()
    swept = []
    for marker in markers:
        path = marker.with_suffix("")
        if not path.exists():  # deleted by a caller that knew only the dir
            marker.unlink(missing_ok=True)
            continue
        try:
            pid, started = (int(value) for value in marker.read_text().split())
        except (OSError, ValueError):
            continue  # being written by its creator right now, or not ours
        if _start_time(pid) == started or any(cwd == path or path in cwd.parents for cwd in in_use):
            continue
        remove_workdir(path)
        swept.append(path)
    if swept:
        progress(f"deleted {len(swept)} data dir(s) left by runs that were killed: {', '.join(p.name for p in swept)}")
    return swept


def _owner_marker(path: Path) -> Path:
    return path.with_name(path.name + ".owner")


def _start_time(pid: int) -> int:
    """The kernel's start time of ``pid`` (0 if it is gone): a pid alone may have been reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rpartition(")")[2].split()[19])


def _working_directories() -> list[Path]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                found.append(Path(os.readlink(proc / "cwd")))
    return found
