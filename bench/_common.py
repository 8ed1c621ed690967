"""Shared plumbing of the benchmarks: free ports, server subprocesses, /proc readings,
wrk runs and the printed table.

Nothing here imports the service: servers always run as separate processes, started the
way an operator starts them (the ``putplace-api`` console script of this venv).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:  # the benchmarks share the test servers' helpers (tests/servers)
    sys.path.insert(0, str(REPO))

from tests.servers.base import keep_workdir, make_workdir, remove_workdir  # noqa: E402

VENV_BIN = Path(sys.executable).parent
ADMIN_KEY = "pp_bench_admin_key_not_secret_0123456789"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need_tool(name: str, install_hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        sys.exit(f"error: `{name}` is not installed; this benchmark needs it.\n  install: {install_hint}")
    return path


def need_wrk() -> str:
    return need_tool("wrk", "apt-get update && apt-get install -y wrk   (Debian/Ubuntu package 'wrk')")


@dataclass
class Server:
    """A server subprocess on 127.0.0.1:port; stderr goes to a log file in its work dir."""

    name: str
    argv: list[str]
    env: dict[str, str]
    workdir: Path
    ready_path: str = "/healthz"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, deadline_s: float = 30.0) -> Server:
        env = {**os.environ, **self.env}
        env["PORT"] = str(self.port)
        argv = [a.replace("{port}", str(self.port)) for a in self.argv]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + deadline_s
        url = self.base_url + self.ready_path
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} not ready at {url} after {deadline_s:.0f}s; log:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, deadline_s: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(deadline_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.proc = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def putplace_server(data_dir: Path, workdir: Path, extra_env: Mapping[str, str] | None = None) -> Server:
    """The real service, started by its console script, one worker, SQLite + local storage."""
    env = {
        "PUTPLACE_DATA_DIR": str(data_dir),
        "PUTPLACE_HOST": "127.0.0.1",
        "PUTPLACE_ADMIN_KEY": ADMIN_KEY,
        "PUTPLACE_LOG_LEVEL": "warning",
        "PUTPLACE_WORKERS": "1",
        **(extra_env or {}),
    }
    server = Server("putplace-api", [str(VENV_BIN / "putplace-api"), "--port", "{port}"], env, workdir, "/readyz")
    return server


def bare_server(workdir: Path, *flags: str) -> Server:
    """The baseline: bench/bare_app.py under the same uvicorn.run() call as the service."""
    return Server("bare-fastapi", [sys.executable, str(BENCH_DIR / "bare_app.py"), "{port}", *flags], {}, workdir)


def proc_status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the process's peak resident set since it started, in MiB."""
    return int(proc_status(pid)["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process so far (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (/proc/<pid>/task/*/comm), threads of one name summed."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        name = "event loop (main)" if task == str(pid) else name.rstrip("0123456789_")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


def thread_cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after if after[k] - before.get(k, 0.0) > 0}


def machine_busy_seconds() -> float:
    """CPU-seconds all cores have spent busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def http_json(method: str, url: str, body: object | None = None, key: str | None = ADMIN_KEY) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("X-API-Key", key)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def settled_file_count(base_url: str, deadline_s: float = 20.0) -> int:
    """The server's record count once requests still in flight (cut off by wrk's stop) have
    finished: /stats polled until two reads 0.3 s apart agree."""
    last = -1
    deadline = time.monotonic() + deadline_s
    while True:
        status, stats = http_json("GET", base_url + "/stats")
        if status != 200:
            raise RuntimeError(f"/stats answered {status}: {stats}")
        files = int(stats["files"])  # type: ignore[index]
        if files == last or time.monotonic() > deadline:
            return files
        last = files
        time.sleep(0.3)


# -- wrk ---------------------------------------------------------------------------------

# A Lua script for wrk: POST a JSON body built per request by `make_body(n)` (defined by the
# caller's snippet), with a per-thread counter and a per-run prefix so that every request
# names distinct paths. done() prints one JSON line that run_wrk() parses.
_WRK_LUA = r"""
local counter = 0
local threads = {}
local prefix = os.getenv("BENCH_PREFIX") or "run"
local sha_prefix = os.getenv("BENCH_SHA_PREFIX")

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-API-Key"] = os.getenv("BENCH_KEY") or ""
  wrk.path = os.getenv("BENCH_PATH")
end

-- sha256-looking hex unique per (thread, n): 40 hex of run prefix + 8 of thread + 16 of n
function sha_for(n)
  return string.format("%s%08x%016x", sha_prefix, tid or 0, n)
end

function meta_json(n)
  return string.format(
    '{"filepath":"/bench/%s/t%d/dir%d/file-%d.dat","hostname":"bench-host","ip_address":"127.0.0.1",' ..
    '"sha256":"%s","file_size":%d,"file_mode":33188,"file_uid":1000,"file_gid":1000,' ..
    '"file_mtime":1764000000.5,"file_atime":1764000001.25,"file_ctime":1764000002.0}',
    prefix, tid or 0, n % 1000, n, sha_for(n), 1024 + n % 4096)
end

%(BODY_SNIPPET)s

function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, make_body(counter))
end

local non2xx = 0
function response(status, headers, body)
  if status < 200 or status >= 300 then
    non2xx = non2xx + 1
    if non2xx <= 3 then io.stderr:write("non-2xx " .. status .. ": " .. string.sub(body, 1, 300) .. "\n") end
  end
end

function done(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_err":%d,"read_err":%d,"write_err":%d,' ..
    '"status_err":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""

SINGLE_BODY = "function make_body(n) return meta_json(n) end"


def curl_upload(src: Path, url: str, *extra: str, key: str | None = ADMIN_KEY) -> list[str]:
    """The curl command that *streams* ``src`` as a raw upload body: ``-T`` reads the file
    as it sends (``--data-binary @file`` loads it whole into memory first), and an empty
    ``Expect:`` skips the 100-continue round trip."""
    argv = ["curl", "-sS", "-X", "POST", "-T", str(src), "-H", "Content-Type: application/octet-stream"]
    argv += ["-H", "Expect:"]
    if key is not None:
        argv += ["-H", f"X-API-Key: {key}"]
    return [*argv, *extra, url]


def batch_body(batch: int) -> str:
    return f"""
local BATCH = {batch}
function make_body(n)
  local parts = {{}}
  for i = 1, BATCH do parts[i] = meta_json((n - 1) * BATCH + i) end
  return '{{"files":[' .. table.concat(parts, ",") .. ']}}'
end
"""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    raw: dict[str, float]
    client_cpu_s: float = 0.0  # wrk's own CPU time (user + system)
    machine_busy_s: float = 0.0  # every process's CPU time on every core during the run

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def run_wrk(
    url: str,
    path: str,
    body_snippet: str,
    *,
    connections: int,
    seconds: float,
    prefix: str,
    workdir: Path,
    threads: int = 1,
    key: str = ADMIN_KEY,
    timeout_s: int = 30,
) -> WrkResult:
    script = workdir / f"wrk-{prefix}.lua"
    script.write_text(_WRK_LUA.replace("%(BODY_SNIPPET)s", body_snippet))
    env = {
        **os.environ,
        "BENCH_PATH": path,
        "BENCH_KEY": key,
        "BENCH_PREFIX": prefix,
        "BENCH_SHA_PREFIX": os.urandom(20).hex(),
    }
    argv = [
        need_wrk(),
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{seconds:g}s",
        "--timeout",
        f"{timeout_s}s",
        "-s",
        str(script),
        url,
    ]
    child0, busy0 = children_cpu_seconds(), machine_busy_seconds()
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + timeout_s + 30)
    client_cpu, busy = children_cpu_seconds() - child0, machine_busy_seconds() - busy0
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    raw = json.loads(line[len("WRKJSON ") :])
    errors = sum(int(raw[k]) for k in ("connect_err", "read_err", "write_err", "status_err", "timeout"))
    if p.stderr.strip():
        print(p.stderr.strip(), file=sys.stderr)
    return WrkResult(
        requests=int(raw["requests"]),
        seconds=raw["duration_us"] / 1e6,
        errors=errors,
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        raw=raw,
        client_cpu_s=client_cpu,
        machine_busy_s=busy,
    )


# -- output ------------------------------------------------------------------------------


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, r in enumerate(cells):
        print("  ".join(c.rjust(w) if n and i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def temp_workdir(tag: str, parent: Path | None = None) -> Path:
    """A fresh dir in the system temp dir; a run killed before ``finish_workdir`` leaves it to
    the next run to delete (``tests.servers.base.sweep_stale_workdirs``)."""
    return make_workdir(f"bench-{tag}", parent or Path(tempfile.gettempdir()))


def finish_workdir(work: Path, keep: bool) -> None:
    """Delete a ``temp_workdir``, or keep it (``--keep``) and say where it is."""
    if keep:
        keep_workdir(work)
        print(f"kept {work}", file=sys.stderr)
    else:
        remove_workdir(work)


def machine_line() -> str:
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), Python {sys.version.split()[0]}"
