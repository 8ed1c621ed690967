"""Soak: writers, readers and agents at a fixed rate against ``putplace-api`` on FerretDB (MongoDB
wire) + MinIO (S3), for ``--seconds`` (default 600), with every process's memory watched.

* **Capacity first** (closed loop, ``--capacity-seconds`` each, ``--connections`` clients): the
  sustained rate of ``POST /put_file`` (a new path and sha each, no upload), and of the full
  two-phase upload of new ``--upload-kib`` contents (``put_file`` + ``upload_file``) on this machine.
  Baseline in the same run: ``GET /healthz`` by the same clients (the HTTP stack's own ceiling),
  so each rate is also reported as a ratio.
* **Then the soak** (open loop: requests start on schedule whatever earlier ones did, and latency
  counts from the scheduled time, so a stall shows instead of hiding):
  - writers: ``--put-rate`` ``put_file``/s of new paths spread over 8 hosts; a quarter announce a
    content another host already sent (deduplicated), the rest new contents of 1-64 KiB, uploaded
    when the server asks;
  - readers: ``--read-rate`` requests/s over ``GET /files`` (a host's page), ``GET /get_file/{sha}``
    and ``GET /content/{sha}`` (the bytes are re-hashed), with a read-only key;
  - agents: ``--agents`` ``putplace-agent`` processes, each syncing its own tree in which a churn
    task writes ``--churn`` files/s (new files and rewrites).
  Every 10 s: the RSS of every process (API master and workers, FerretDB, MinIO, agents).
* **At the end**: the agents' catalogues equal their trees; every content written was downloaded
  back and re-hashed once; errors (goal 0); RSS at the end of the steady state vs its start (after
  the first minute, goal growth <= 10 %); p50/p99 of the first vs the last minute.
* **Overload** (``--overload F``): from ``--overload-at`` s for ``--overload-seconds`` s, more
  writers bring the writes to F x the two-phase capacity. A write's call answered 503 (its
  ``put_file`` or its upload) is sent again after its Retry-After, as an agent sends each call,
  until it is stored; a read answered 503 counts as shed. Every
  answer's time is recorded (from sending, not from the schedule), and a timeline per 10 s shows
  answers by status with their p99 and max, so the stall or the shedding shows, and how soon after
  the load drops the answers are all 2xx again. At the end every host's catalogue must equal what
  the writers were told was stored (nothing lost).

    .venv/bin/python bench/soak.py [--seconds 600] [--put-rate 40] [--read-rate 40] [--agents 2] [--churn 5]
    .venv/bin/python bench/soak.py --seconds 240 --overload 2 [--api-env PUTPLACE_DATABASE_MAX_CONCURRENCY=0]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    cpu_seconds,
    finish_workdir,
    machine_busy_seconds,
    machine_line,
    print_table,
    temp_workdir,
)
from tests.agent.conftest import Agent  # noqa: E402
from tests.api.conftest import ADMIN_KEY  # noqa: E402
from tests.processes import ApiProcess  # noqa: E402
from tests.servers import SERVERS, S3Server, ferretdb  # noqa: E402
from tests.servers.base import remove_workdir  # noqa: E402
from tests.servers.base import workdir as scratch  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

HOSTS = [f"soak-host-{i}" for i in range(8)]
SAMPLE_SECONDS = 10.0
WARMUP_SECONDS = 60.0
GIVE_UP_SECONDS = 300.0  # a write still refused this long after its schedule is an error
CLIENT_TIMEOUT = 30.0  # seconds an answer may take before the client gives up on it (httpx)


# -- processes and memory ------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    """Direct children of a process (the uvicorn workers of the API's master)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@dataclass
class Watched:
    """Processes whose RSS and CPU time are sampled: name -> pid."""

    pids: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    cpu: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def sample(self, t: float) -> None:
        for name, pid in self.pids.items():
            try:
                self.samples[name].append((t, rss_mib(pid)))
                self.cpu[name].append(cpu_seconds(pid))
            except OSError:
                self.samples[name].append((t, float("nan")))

    def cpu_share(self, name: str, seconds: float) -> float:
        """Average cores used over the soak."""
        series = self.cpu[name]
        return (series[-1] - series[0]) / seconds if len(series) > 1 else float("nan")

    def at(self, name: str, t: float) -> float:
        """The first sample at or after t (the steady state's start), or the last one."""
        series = self.samples[name]
        return next((v for ts, v in series if ts >= t), series[-1][1])


# -- the load ------------------------------------------------------------------------------------


@dataclass
class Recorder:
    """Latency (from the scheduled start) and outcome of every request, by kind."""

    t0: float
    latencies: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    examples: list[str] = field(default_factory=list)
    late: int = 0
    answers: list[tuple[float, float, int]] = field(default_factory=list)  # (sent at, seconds, status)
    # (t, seconds this process's event loop was late): when it lags, so do the answer times above
    lag: list[tuple[float, float]] = field(default_factory=list)
    shed: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # 503s: writes retried, reads dropped
    fresh: list[tuple[float, float, int]] = field(default_factory=list)  # put_file first attempts, as answers

    def ok(self, kind: str, scheduled: float) -> None:
        now = time.monotonic()
        self.latencies[kind].append((scheduled - self.t0, now - scheduled))

    def error(self, kind: str, what: str) -> None:
        self.errors[kind] += 1
        if len(self.examples) < 10:
            self.examples.append(f"{kind}: {what}")


def content_for(rng: random.Random) -> bytes:
    size = rng.randint(1, 64) * 1024
    return rng.randbytes(size - 40) + uuid.uuid4().hex.encode() + b"\n" * 8


def meta(host: str, path: str, data: bytes) -> dict[str, Any]:
    now = time.time()
    return {
        "filepath": path, "hostname": host, "ip_address": "127.0.0.1",
        "sha256": hashlib.sha256(data).hexdigest(), "file_size": len(data), "file_mode": 0o100644,
        "file_uid": 1000, "file_gid": 1000, "file_mtime": now, "file_atime": now, "file_ctime": now,
    }  # fmt: skip


class Connections:
    """``n`` connections to the API, each its own one-connection client, lent out one at a time.

    Not one httpx client with ``n`` connections: httpcore assigns queued requests to connections
    in a loop over both, so with hundreds of requests waiting (the overload) this process spent a
    whole core there and sent almost nothing, while the API idled. A queue of clients is O(1).
    """

    def __init__(self, url: str, key: str, n: int) -> None:
        one, headers = httpx.Limits(max_connections=1), {"X-API-Key": key}
        self.all = [
            httpx.AsyncClient(base_url=url, headers=headers, timeout=CLIENT_TIMEOUT, limits=one) for _ in range(n)
        ]
        self.free: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
        for client in self.all:
            self.free.put_nowait(client)

    @asynccontextmanager
    async def one(self) -> AsyncIterator[httpx.AsyncClient]:
        client = await self.free.get()
        try:
            yield client
        finally:
            self.free.put_nowait(client)

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        async with self.one() as client:
            return await client.get(url, **kwargs)

    async def aclose(self) -> None:
        for client in self.all:
            await client.aclose()


class Load:
    def __init__(
        self, url: str, write_key: str, read_key: str, rec: Recorder, paths: int, connections: int = 64, seed: int = 7
    ) -> None:
        # Enough connections that a request waits on the server, not in this client: under overload
        # the answer times must be the server's.
        self.w = Connections(url, write_key, connections)
        self.r = Connections(url, read_key, connections)
        self.rec = rec
        self.rng = random.Random(seed)
        self.sent: dict[str, bytes] = {}  # sha -> bytes, for contents the server stored
        self.verified: set[str] = set()
        self.current: dict[tuple[str, str], str] = {}  # (host, path) -> sha256, as written
        self.refs: Counter[str] = Counter()  # current records per sha256
        self.paths = paths
        self.in_flight: set[asyncio.Task[None]] = set()
        self.busy: set[tuple[str, str]] = set()  # (host, path) being written
        self.uncertain: set[tuple[str, str]] = set()  # a write failed: the server may or may not have it
        self.replacing: Counter[str] = Counter()  # sha256s that writes in flight are replacing

    async def close(self) -> None:
        await self.w.aclose()
        await self.r.aclose()

    async def send(
        self, clients: Connections, method: str, url: str, *, fresh: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """One request, its answer recorded (``fresh``: also among the first attempts of writes)."""
        answers = [self.rec.answers, self.rec.fresh] if fresh else [self.rec.answers]
        async with clients.one() as client:
            started = time.monotonic()  # a free connection in hand: from here on, the server's time
            try:
                r = await client.request(method, url, **kwargs)
            except httpx.HTTPError:
                for into in answers:
                    into.append((started - self.rec.t0, time.monotonic() - started, 0))
                raise
        # 503 "busy" (shed at the cap) recorded as 529, to tell it from a backend timeout's 503.
        status = 529 if r.status_code == 503 and "busy" in r.text else r.status_code
        for into in answers:
            into.append((started - self.rec.t0, time.monotonic() - started, status))
        return r

    async def put_and_upload(self, host: str, path: str, data: bytes, kind: str, scheduled: float) -> None:
        m = meta(host, path, data)
        r = await self.retried(
            kind, scheduled, lambda first: self.send(self.w, "POST", "/put_file", json=m, fresh=first)
        )
        if r.status_code == 201 and r.json()["upload_required"]:
            r = await self.retried(kind, scheduled, lambda _: self.send(
                self.w, "POST", f"/upload_file/{m['sha256']}", content=data,
                headers={"Content-Type": "application/octet-stream"},
            ))  # fmt: skip
        if r.status_code not in (200, 201):
            return self.rec.error(kind, f"{r.request.url.path} {r.status_code} {r.text[:200]}")
        self.sent[m["sha256"]] = data
        old = self.current.get((host, path))
        if old is not None:
            self.refs[old] -= 1
        self.current[(host, path)] = m["sha256"]
        self.uncertain.discard((host, path))
        self.refs[m["sha256"]] += 1
        self.rec.ok(kind, scheduled)

    async def retried(
        self, kind: str, scheduled: float, call: Callable[[bool], Awaitable[httpx.Response]]
    ) -> httpx.Response:
        """``call`` sent again after a 503 or a dropped connection, as the agent sends each call
        (putplace_agent.retry: exponential backoff with full jitter up to 15 s, never sooner than
        Retry-After), until ``GIVE_UP_SECONDS`` after the write was scheduled. ``call`` is told
        whether this is its first attempt."""
        attempt = 0
        while True:
            attempt += 1
            try:
                r = await call(attempt == 1)
            except httpx.TransportError:
                if time.monotonic() - scheduled > GIVE_UP_SECONDS:
                    raise
                self.rec.shed[f"{kind} (connection dropped)"] += 1
                await asyncio.sleep(random.uniform(0, min(15.0, 0.25 * 2**attempt)))
                continue
            if r.status_code != 503 or time.monotonic() - scheduled > GIVE_UP_SECONDS:
                return r
            self.rec.shed[kind] += 1
            backoff = random.uniform(0, min(15.0, 0.25 * 2**attempt))
            await asyncio.sleep(max(backoff, float(r.headers.get("retry-after", "1"))))

    async def write_one(self, scheduled: float) -> None:
        host = self.rng.choice(HOSTS)
        if self.sent and self.rng.random() < 0.25:
            data = self.sent[self.rng.choice(list(self.sent))]  # another host's content: deduplicated
        else:
            data = content_for(self.rng)
        # A bounded set of paths: the catalogue grows to it, then writes replace records (and
        # history grows), as on nodes whose files change. One write at a time per path, so the
        # order the server stored them in is the order they were acknowledged in.
        while True:
            n = self.rng.randrange(self.paths)
            path = f"/soak/d{n % 100}/f{n}.bin"
            if (host, path) not in self.busy:
                break
            # A backlog of retried writes may hold many of a host's paths: let them progress.
            await asyncio.sleep(0.01)
        self.busy.add((host, path))
        errors = self.rec.errors["write"]
        replaced = self.current.get((host, path))
        if replaced is not None:
            self.replacing[replaced] += 1
        try:
            await self.put_and_upload(host, path, data, "write", scheduled)
        except httpx.HTTPError:
            self.uncertain.add((host, path))
            raise
        finally:
            self.busy.discard((host, path))
            if replaced is not None:
                self.replacing[replaced] -= 1
            if self.rec.errors["write"] != errors:
                self.uncertain.add((host, path))

    async def read_one(self, scheduled: float) -> None:
        which = self.rng.random()
        if not self.sent or which < 0.34:
            r = await self.send(self.r, "GET", "/files", params={"hostname": self.rng.choice(HOSTS), "limit": 50})
            kind = "read:list"
        elif which < 0.67:
            sha = self.rng.choice(list(self.sent))
            r = await self.send(self.r, "GET", f"/get_file/{sha}")
            kind = "read:get_file"
            if r.status_code == 404 and (self.refs[sha] <= 0 or self.replacing[sha] > 0):
                # Every path naming it was rewritten since, or is being rewritten: right.
                return self.rec.ok(kind, scheduled)
        else:
            sha = self.rng.choice(list(self.sent))
            r = await self.send(self.r, "GET", f"/content/{sha}")
            kind = "read:content"
            if r.status_code == 200:
                if hashlib.sha256(r.content).hexdigest() != sha:
                    return self.rec.error(kind, f"content of {sha} does not hash to its sha")
                self.verified.add(sha)
        if r.status_code == 503:
            self.rec.shed[kind] += 1  # refused at once under overload: a reader's sample, dropped
            return None
        if r.status_code != 200:
            return self.rec.error(kind, f"{r.status_code} {r.text[:200]}")
        self.rec.ok(kind, scheduled)

    async def _guarded(self, job: Any, kind: str, scheduled: float) -> None:
        try:
            await job(scheduled)
        except httpx.HTTPError as exc:
            self.rec.error(kind, f"{type(exc).__name__}: {exc}")

    async def at_rate(
        self, job: Any, kind: str, rate: float, until: float, cap: int = 256, start: float | None = None
    ) -> None:
        """Start ``job`` ``rate`` times a second on a fixed schedule from ``start`` until ``until``
        (monotonic)."""
        if rate <= 0:
            return
        interval = 1.0 / rate
        scheduled = start if start is not None else time.monotonic()
        while scheduled < until:
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(self.in_flight) >= cap:
                self.rec.late += 1  # the server fell this far behind: counted, not queued without end
            else:
                task = asyncio.create_task(self._guarded(job, kind, scheduled))
                self.in_flight.add(task)
                task.add_done_callback(self.in_flight.discard)
            scheduled += interval

    async def drain(self) -> None:
        while self.in_flight:
            await asyncio.gather(*list(self.in_flight))


async def churn(trees: list[Path], rate: float, until: float, seed: int = 11) -> int:
    """Write ``rate`` files a second across the agents' trees: 3 new files for each rewrite."""
    rng = random.Random(seed)
    written: list[Path] = []
    n = 0
    scheduled = time.monotonic()
    while scheduled < until:
        await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
        if written and rng.random() < 0.25:
            path = rng.choice(written)
        else:
            tree = rng.choice(trees)
            path = tree / f"d{n % 20}" / f"churn-{n}.dat"
            path.parent.mkdir(exist_ok=True)
            written.append(path)
        path.write_bytes(rng.randbytes(rng.randint(1, 32) * 1024))
        n += 1
        scheduled += 1.0 / rate
    return n


async def closed_loop(job: Any, connections: int, seconds: float) -> tuple[int, list[float], int]:
    """``connections`` clients calling ``job`` back to back for ``seconds``: count, latencies, errors."""
    latencies: list[float] = []
    errors = 0
    until = time.monotonic() + seconds

    async def client() -> None:
        nonlocal errors
        while time.monotonic() < until:
            t = time.monotonic()
            try:
                ok = await job()
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.monotonic() - t)
            else:
                errors += 1

    await asyncio.gather(*(client() for _ in range(connections)))
    return len(latencies), latencies, errors


# -- the run -------------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def capacity(url: str, key: str, args: argparse.Namespace) -> list[list[object]]:
    rng = random.Random(3)
    limits = httpx.Limits(max_connections=args.connections)
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, timeout=CLIENT_TIMEOUT, limits=limits) as c:
        seq = 0

        async def healthz() -> bool:
            return (await c.get("/healthz")).status_code == 200

        async def put_only() -> bool:
            nonlocal seq
            seq += 1
            # Metadata only: a fresh sha that is never uploaded (the catalogue of a file whose
            # content some other host will send).
            m = meta("capacity", f"/cap/put/{seq}", uuid.uuid4().bytes)
            return (await c.post("/put_file", json=m)).status_code == 201

        async def two_phase() -> bool:
            nonlocal seq
            seq += 1
            data = rng.randbytes(args.upload_kib * 1024 - 16) + uuid.uuid4().bytes
            m = meta("capacity", f"/cap/upload/{seq}", data)
            if (await c.post("/put_file", json=m)).status_code != 201:
                return False
            r = await c.post(
                f"/upload_file/{m['sha256']}", content=data, headers={"Content-Type": "application/octet-stream"}
            )
            return r.status_code == 200

        rows: list[list[object]] = []
        base_rate = 0.0
        for name, job in (("GET /healthz (baseline)", healthz), ("put_file", put_only),
                          (f"put_file + upload {args.upload_kib} KiB", two_phase)):  # fmt: skip
            await closed_loop(job, args.connections, 2.0)  # warm-up
            n, lat, errors = await closed_loop(job, args.connections, args.capacity_seconds)
            rate = n / args.capacity_seconds
            base_rate = base_rate or rate
            rows.append([name, rate, rate / base_rate, pct(lat, 50), pct(lat, 99), errors])
        return rows


async def soak(api: ApiProcess, agents: list[Agent], watched: Watched, args: argparse.Namespace) -> dict[str, Any]:
    write_key = api.new_key("write")
    read_key = api.new_key("read")
    rec = Recorder(time.monotonic())
    load = Load(api.url, write_key, read_key, rec, args.paths_per_host, 256 if args.overload else 64)
    # From here: making 512 clients took 40 s on a busy machine, which ate the steady state before
    # the overload (the schedules start now).
    rec.t0 = time.monotonic()
    until = rec.t0 + args.seconds

    async def lag() -> None:
        while time.monotonic() < until:
            before = time.monotonic()
            await asyncio.sleep(0.1)
            rec.lag.append((before - rec.t0, time.monotonic() - before - 0.1))

    async def sampler() -> None:
        while time.monotonic() < until:
            watched.sample(time.monotonic() - rec.t0)
            await backend_seconds(load.w, time.monotonic() - rec.t0)
            elapsed = time.monotonic() - rec.t0
            done = sum(len(v) for v in rec.latencies.values())
            errors = sum(rec.errors.values())
            print(f"  {elapsed:5.0f}/{args.seconds:.0f} s  requests {done}  errors {errors}  late {rec.late}",
                  file=sys.stderr, flush=True)  # fmt: skip
            await asyncio.sleep(SAMPLE_SECONDS)
        watched.sample(time.monotonic() - rec.t0)

    # Retried writes wait in flight through an overload: the client's own backlog, not a stall.
    cap = 4096 if args.overload else 256
    surge_start = rec.t0 + args.overload_at
    results: list[Any] = await asyncio.gather(
        load.at_rate(load.write_one, "write", args.put_rate, until, cap),
        load.at_rate(load.read_one, "read", args.read_rate, until, cap),
        churn([a.root for a in agents], args.churn, until) if agents else asyncio.sleep(0, 0),
        sampler(),
        lag(),
        load.at_rate(
            load.write_one, "write", args.overload_rate - args.put_rate,
            min(until, surge_start + args.overload_seconds), cap, start=surge_start,
        ) if args.overload else asyncio.sleep(0),
    )  # fmt: skip
    await load.drain()
    # Every content the writers stored is read back once more, whatever the readers sampled.
    failed = 0
    for sha, data in list(load.sent.items()):
        if sha in load.verified:
            continue
        r = await load.r.get(f"/content/{sha}")
        if r.status_code != 200 or r.content != data:
            rec.error("final-check", f"content {sha}: {r.status_code} {r.text[:200]}")
            failed += 1
            if failed >= 10:  # the backends no longer answer: the report matters more than the rest
                rec.error("final-check", "stopped after 10 failures")
                break
    await backend_seconds(load.w, time.monotonic() - rec.t0)
    await load.close()
    return {
        "rec": rec,
        "churned": results[2] or 0,
        "contents": len(load.sent),
        "current": load.current,
        "uncertain": load.uncertain,
    }


def tree_shas(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def converged(api: ApiProcess, agent: Agent) -> bool:
    try:
        return api.catalogue(agent.node) == tree_shas(agent.root)
    except httpx.HTTPError:
        return False


# (t, {operation: (calls, seconds, calls over 1 s)}) of the API's database calls, both workers summed.
BACKEND_SAMPLES: list[tuple[float, dict[str, tuple[float, float, float]]]] = []
# The API's refusals at its cap by where (putplace_shed_total), from the last sample: a route is
# a request refused on arrival, a store method a call refused (a request's first database call,
# or, before admission per request, any of its calls; or a background task's).
SHED_BY_OPERATION: dict[str, float] = {}
# (t, {le: requests answered within le seconds}) of the API itself, every route and worker summed.
SERVER_SAMPLES: list[tuple[float, dict[float, float]]] = []


async def backend_seconds(client: Connections, t: float) -> None:
    """Sample ``putplace_backend_operation_duration_seconds`` (database) from /metrics."""
    try:
        r = await client.get("/metrics", headers={"X-API-Key": ADMIN_KEY})
    except httpx.HTTPError:
        return  # a missed sample: the API is too busy to be asked, which the timeline shows
    if r.status_code != 200:
        return
    ops: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    served: dict[float, float] = defaultdict(float)
    for family in text_string_to_metric_families(r.text):
        if family.name == "putplace_http_request_duration_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket") and sample.labels.get("route") != "/metrics":
                    served[float(sample.labels["le"])] += sample.value
        if family.name == "putplace_shed":
            shed: dict[str, float] = defaultdict(float)
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    shed[sample.labels["operation"]] += sample.value
            SHED_BY_OPERATION.clear()
            SHED_BY_OPERATION.update(shed)
        if family.name != "putplace_backend_operation_duration_seconds":
            continue
        for sample in family.samples:
            if sample.labels.get("backend") != "database":
                continue
            op = ops[sample.labels["operation"]]
            if sample.name.endswith("_count"):
                op[0] += sample.value
                op[2] += sample.value
            elif sample.name.endswith("_sum"):
                op[1] += sample.value
            elif sample.name.endswith("_bucket") and sample.labels.get("le") == "1.0":
                op[2] -= sample.value
    BACKEND_SAMPLES.append((t, {name: (v[0], v[1], v[2]) for name, v in ops.items()}))
    SERVER_SAMPLES.append((t, dict(served)))


def backend_rows(first: float, last: float) -> list[list[object]]:
    """Per database operation: calls, mean ms and calls over 1 s, up to ``first`` s and from ``last`` s."""
    if len(BACKEND_SAMPLES) < 2:
        return []
    at_first = next((snap for t, snap in BACKEND_SAMPLES if t >= first), BACKEND_SAMPLES[-1][1])
    at_last = next((snap for t, snap in BACKEND_SAMPLES if t >= last), BACKEND_SAMPLES[-1][1])
    end = BACKEND_SAMPLES[-1][1]
    rows: list[list[object]] = []
    for name in sorted(end):
        a = at_first.get(name, (0.0, 0.0, 0.0))
        b = at_last.get(name, (0.0, 0.0, 0.0))
        c = end[name]
        late = (c[0] - b[0], c[1] - b[1], c[2] - b[2])
        if not (a[0] or late[0]):
            continue
        rows.append([name, a[0], a[1] / a[0] * 1000 if a[0] else float("nan"), a[2],
                     late[0], late[1] / late[0] * 1000 if late[0] else float("nan"), late[2]])  # fmt: skip
    return rows


def timeline(rec: Recorder, args: argparse.Namespace) -> tuple[list[list[object]], dict[str, Any]]:
    """Answers per 10 s window (by the time they were sent): count by status, p99 and max seconds;
    and, for the overload, the slowest answer during it and when the answers were all 2xx again."""
    window = 10.0 if args.overload else 60.0
    rows: list[list[object]] = []
    by_window: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for sent, seconds, status in rec.answers:
        by_window[int(sent // window)].append((seconds, status))
    clean_from = None
    drop = args.overload_at + args.overload_seconds
    lags: dict[int, float] = defaultdict(float)
    for t, late in rec.lag:
        lags[int(t // window)] = max(lags[int(t // window)], late)
    # Writes acknowledged in each window (by when acknowledged): the drain's pace after the drop.
    acked_in: Counter[int] = Counter(int((t + seconds) // window) for t, seconds in rec.latencies["write"])
    for w in sorted(by_window):
        answers = by_window[w]
        times = [s for s, _ in answers]
        ok = sum(1 for _, st in answers if 200 <= st < 300 or st == 404)
        busy = sum(1 for _, st in answers if st == 529)
        fast_busy = sum(1 for s, st in answers if st == 529 and s < 1.0)
        timeouts = sum(1 for _, st in answers if st == 503)
        shed = busy + timeouts
        other = len(answers) - ok - shed
        served = server_window(w * window, (w + 1) * window)
        rows.append([f"{w * window:.0f}-{(w + 1) * window:.0f}", len(answers), ok, busy, fast_busy, timeouts, other,
                     pct(times, 50), pct(times, 99), max(times) * 1000, lags.get(w, 0.0) * 1000,
                     acked_in.get(w, 0), *served])  # fmt: skip
        if w * window >= drop and clean_from is None and shed == 0 and other == 0:
            clean_from = w * window
        elif shed or other:
            clean_from = None
    during = [s for t, s, _ in rec.answers if args.overload_at <= t < drop]
    # The writes shed during the overload are retried, so the load does not drop with the offered
    # rate: the API serves that backlog first. It cannot be gone sooner than the backlog divided
    # by the capacity left beside the steady load -- the bound "recovery" is compared with.
    acked = [(t, t + seconds) for t, seconds in rec.latencies["write"]]
    backlog = sum(1 for t, done in acked if t < drop <= done)
    spare = args.overload_rate / args.overload - args.put_rate if args.overload else 0.0
    summary = {
        **fresh_recovery(rec, args, drop, window),
        "max_answer_s_during_overload": max(during) if during else float("nan"),
        "p99_answer_s_during_overload": pct(during, 99) / 1000 if during else float("nan"),
        "all_2xx_again_s_after_drop": None if clean_from is None else clean_from - drop,
        "writes_in_backlog_at_drop": backlog,
        "backlog_s_at_spare_capacity": backlog / spare if spare > 0 else float("inf"),
        "last_backlog_write_acked_s_after_drop": max((done for t, done in acked if t < drop), default=drop) - drop,
    }
    return rows, summary


def fresh_recovery(rec: Recorder, args: argparse.Namespace, drop: float, window: float) -> dict[str, Any]:
    """The API's recovery, apart from the clients': how soon after the drop *fresh* writes (first
    attempts of put_file) are all answered 2xx at their normal latency again -- from the first
    window after which every window is so -- beside when the retried backlog is drained (the
    last write pending at the drop acknowledged, in the summary). "Normal": the p99 of the first
    attempts sent in the minute before the overload, 2x for noise on a shared machine."""
    before = [s for t, s, st in rec.fresh if args.overload_at - 60 <= t < args.overload_at and 200 <= st < 300]
    normal = 2 * pct(before, 99) / 1000 if before else float("nan")
    by_window: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for sent, seconds, status in rec.fresh:
        if sent >= drop:
            by_window[int((sent - drop) // window)].append((seconds, status))
    recovered = None
    for w in sorted(by_window):
        answers = by_window[w]
        clean = all(200 <= st < 300 for _, st in answers) and pct([s for s, _ in answers], 99) / 1000 <= normal
        if clean and recovered is None:
            recovered = w * window
        elif not clean:
            recovered = None
    return {
        "fresh_write_p99_s_before_overload": normal / 2,
        "fresh_writes_normal_again_s_after_drop": recovered,
    }


def server_window(start: float, end: float) -> list[object]:
    """The API's own answers between two /metrics samples: how many, and how many took over 1 s
    and over 5 s (its histogram's buckets; it counts from the request reaching the app)."""
    a = next((snap for t, snap in SERVER_SAMPLES if t >= start - 1), None)
    b = next((snap for t, snap in SERVER_SAMPLES if t >= end - 1), None)
    if a is None or b is None or a is b:
        return ["", "", ""]
    total = b.get(float("inf"), 0) - a.get(float("inf"), 0)
    within_1 = b.get(1.0, 0) - a.get(1.0, 0)
    within_5 = b.get(5.0, 0) - a.get(5.0, 0)
    return [total, total - within_1, total - within_5]


def lost_records(api: ApiProcess, current: dict[tuple[str, str], str], uncertain: set[tuple[str, str]]) -> list[str]:
    """Writes acknowledged but not in the catalogue as acknowledged (the last write of a path
    wins), leaving out paths whose last write failed (the server may have stored it or not)."""
    wrong = []
    for host in HOSTS:
        stored = api.catalogue(host)
        for (h, path), sha in current.items():
            if h == host and (h, path) not in uncertain and stored.get(path) != sha:
                wrong.append(f"{host}:{path} stored {stored.get(path)}, acknowledged {sha}")
    return wrong


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--put-rate", type=float, help="writers' put_file per second (default: --load x capacity)")
    ap.add_argument("--read-rate", type=float, help="readers' requests per second (default: the put rate)")
    ap.add_argument("--load", type=float, default=0.15, help="soak rate as a fraction of the two-phase capacity")
    ap.add_argument("--agents", type=int, default=2)
    ap.add_argument("--paths-per-host", type=int, default=500, help="distinct paths each writer host uses")
    ap.add_argument("--churn", type=float, default=5, help="files per second written into the agents' trees")
    ap.add_argument("--workers", type=int, default=2, help="API worker processes")
    ap.add_argument("--connections", type=int, default=16, help="clients of the capacity phase")
    ap.add_argument("--capacity-seconds", type=float, default=20)
    ap.add_argument("--upload-kib", type=int, default=16)
    ap.add_argument("--overload", type=float, default=0, help="writes at this x the two-phase capacity, for a while")
    ap.add_argument("--overload-at", type=float, default=60, help="seconds into the soak the overload starts")
    ap.add_argument("--overload-seconds", type=float, default=60)
    ap.add_argument(
        "--ferretdb-indexes",
        action="store_true",
        help="create the GIN indexes of docs/ferretdb-postgresql-indexes.sql once the API has started",
    )
    ap.add_argument("--api-env", action="append", default=[], metavar="NAME=VALUE", help="extra API setting")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    args = ap.parse_args()

    work = temp_workdir("soak")
    print(machine_line())
    busy = machine_busy_seconds()
    time.sleep(5)
    print(f"other processes before the start: {(machine_busy_seconds() - busy) / 5 * 100:.0f} % of a core")
    with ExitStack() as stack:
        stack.callback(remove_workdir, work)
        for name in ("ferretdb", "minio"):
            SERVERS[name].install()
        db = ferretdb.start(
            stack.enter_context(scratch("ferretdb")), log_path=work / "ferretdb.log", backend="postgresql"
        )
        stack.callback(db.stop)
        s3_server = SERVERS["minio"].start(stack.enter_context(scratch("minio")), log_path=work / "minio.log")
        stack.callback(s3_server.stop)
        s3 = S3Server.from_env("minio", s3_server.env)
        assert s3 is not None
        bucket = s3.create_bucket("soak")
        (work / "api").mkdir()
        api = ApiProcess(
            work / "api",
            env={
                "PUTPLACE_WORKERS": str(args.workers),
                "PUTPLACE_DATABASE_URL": db.env[ferretdb.ENV_URL].rstrip("/") + "/putplace_soak",
                "PUTPLACE_STORAGE_URL": f"s3://{bucket}/content/",
                "PUTPLACE_S3_ENDPOINT_URL": s3.endpoint_url,
                "PUTPLACE_S3_ACCESS_KEY_ID": s3.access_key,
                "PUTPLACE_S3_SECRET_ACCESS_KEY": s3.secret_key,
                "PUTPLACE_S3_REGION": s3.region,
                **dict(item.split("=", 1) for item in args.api_env),
            },
        )
        api.start()
        stack.callback(api.stop)
        if args.ferretdb_indexes:  # the API's start created the collections they go on
            done = ferretdb.add_putplace_indexes(db, "putplace_soak")
            print(done.stderr.strip(), flush=True)  # the script's one NOTICE line, or its error
            if done.returncode != 0:
                return 1
            ferretdb.restart(db)  # as the script asks: its plan setting reaches new connections only
            wait_until(lambda: httpx.get(f"{api.url}/readyz", timeout=5).status_code == 200, 30, "the API ready again")
        assert api.process is not None and api.process.popen is not None
        api_pid = api.process.pid

        print(f"capacity: {args.connections} clients, {args.capacity_seconds:g} s each", flush=True)
        cap_rows = asyncio.run(capacity(api.url, ADMIN_KEY, args))
        print_table(["closed loop", "req/s", "ratio", "p50 ms", "p99 ms", "errors"], cap_rows)
        # A fixed rate well under what the machine sustains: a soak looks for leaks and drift,
        # not for the knee (the capacity rows above are that).
        args.put_rate = args.put_rate or round(max(1.0, args.load * cast(float, cap_rows[2][1])), 1)
        args.read_rate = args.read_rate or args.put_rate
        args.overload_rate = round(args.overload * cast(float, cap_rows[2][1]), 1)

        agents = []
        for i in range(args.agents):
            tree = work / f"tree-{i}"
            for d in range(5):
                (tree / f"seed{d}").mkdir(parents=True)
                for f in range(40):
                    (tree / f"seed{d}" / f"s{f}.dat").write_bytes(os.urandom(4096) + bytes([i]))
            agent = Agent(api, tree, work, node=f"soak-agent-{i}", key=api.new_key("write"))
            agent.start()
            stack.callback(agent.stop)
            agents.append(agent)

        watched = Watched({"api master": api_pid})
        workers = [pid for pid in sorted(children(api_pid)) if b"resource_tracker" not in cmdline(pid)]
        for n, pid in enumerate(workers):
            watched.pids[f"api worker {n + 1}"] = pid
        for agent in agents:
            assert agent.popen is not None
            watched.pids[agent.node] = agent.popen.pid
        ours = set(watched.pids)  # the goal is on PutPlace's processes; the servers' are shown
        watched.pids.update(ferretdb=db.process.pid, postgres=db.backing[0].pid, minio=s3_server.process.pid)

        print(f"soak: {args.seconds:g} s, {args.put_rate:g} put_file/s, {args.read_rate:g} reads/s, "
              f"{args.agents} agents with {args.churn:g} files/s of churn", flush=True)  # fmt: skip
        if args.overload:
            print(f"overload: from {args.overload_at:g} s for {args.overload_seconds:g} s, writes at "
                  f"{args.overload_rate:g}/s ({args.overload:g} x the two-phase capacity); API env {args.api_env}",
                  flush=True)  # fmt: skip
        busy, began = machine_busy_seconds(), time.monotonic()
        outcome = asyncio.run(soak(api, agents, watched, args))
        machine = (machine_busy_seconds() - busy) / (time.monotonic() - began)
        rec: Recorder = outcome["rec"]
        for agent in agents:
            try:
                # After an overload the agents' retries back off (up to 15 s) behind their own backlog.
                wait = 300 if args.overload else 120
                wait_until(partial(converged, api, agent), wait, f"{agent.node}'s catalogue to equal its tree")
            except AssertionError as exc:
                rec.error("agents", str(exc))

        print("\nsoak results")
        rows = []
        for kind, samples in sorted(rec.latencies.items()):
            lat = [v for _, v in samples]
            first = [v for t, v in samples if t < 60]
            last = [v for t, v in samples if t >= args.seconds - 60]
            rows.append([kind, len(lat), len(lat) / args.seconds, pct(lat, 50), pct(lat, 99),
                         pct(first, 99), pct(last, 99), rec.errors.get(kind, 0)])  # fmt: skip
        print_table(["requests", "served", "per s", "p50 ms", "p99 ms", "p99 1st min", "p99 last min", "errors"], rows)
        errors = sum(rec.errors.values()) + rec.late
        for example in rec.examples:
            print(f"  error: {example}")
        lost = lost_records(api, outcome["current"], outcome["uncertain"])
        for line in lost[:10]:
            rec.error("lost", line)
        errors += len(lost)
        rows_t, overload = timeline(rec, args)
        print("\ntimeline of answers, by when sent. 503 busy = shed at the cap, 'fast' within 1 s; 503 other = a"
              " backend timed out; times measured by this client (its event loop's worst lag shown: it adds to"
              " them), writes acknowledged in the window, then the API's own histogram (answers, over 1 s,"
              " over 5 s)")  # fmt: skip
        print_table(["seconds", "answers", "2xx/404", "503 busy", "fast", "503 other", "other", "p50 ms", "p99 ms",
                     "max ms", "client lag ms", "writes acked", "API answers", "> 1 s", "> 5 s"], rows_t)  # fmt: skip
        if SHED_BY_OPERATION:
            print("the API's refusals at its cap, by where (a route: on arrival; a store method: at that "
                  f"call): {dict(sorted(SHED_BY_OPERATION.items()))}")  # fmt: skip
        print(f"503s: {dict(rec.shed)} (writes sent again after Retry-After); records lost: {len(lost)} "
              f"of {len(outcome['current'])} acknowledged paths")  # fmt: skip
        if args.overload:
            print(f"overload: {overload}")
            fresh = overload["fresh_writes_normal_again_s_after_drop"]
            print(f"recovery after the drop: the API's (fresh writes all 2xx within 2x their p99 before, "
                  f"{2 * overload['fresh_write_p99_s_before_overload']:.2f} s) "
                  f"{'not within the run' if fresh is None else f'from {fresh:.0f} s'}; the clients' (the retried "
                  f"backlog acknowledged) at {overload['last_backlog_write_acked_s_after_drop']:.0f} s")  # fmt: skip
            longest, acked = overload["max_answer_s_during_overload"], overload["last_backlog_write_acked_s_after_drop"]
            bound = overload["backlog_s_at_spare_capacity"]
            print(f"overload goals: answers within the clients' {CLIENT_TIMEOUT:g} s timeout "
                  f"{'met' if longest < CLIENT_TIMEOUT else 'NOT met'} (max {longest:.1f} s); nothing lost "
                  f"{'met' if not lost else 'NOT met'} ({len(lost)} of {len(outcome['current'])}); the retried "
                  f"backlog acknowledged {acked:.0f} s after the drop, {acked / bound:.1f}x the {bound:.0f} s of work "
                  f"it needs at the spare capacity (its lower bound)")  # fmt: skip
        rows_b = backend_rows(60, args.seconds - 60)
        if rows_b:
            print("\ndatabase calls of the API (both workers), first minute vs last minute")
            print_table(["operation", "calls 1st", "mean ms 1st", "> 1 s 1st", "calls last", "mean ms last",
                         "> 1 s last"], rows_b)  # fmt: skip
        total_cpu = sum(watched.cpu_share(name, args.seconds) for name in watched.pids)
        print(f"machine busy during the soak and its drain: {machine * 100:.0f} % of a core "
              f"(/proc/stat); the watched processes: {total_cpu * 100:.0f} %")  # fmt: skip

        steady = min(WARMUP_SECONDS, args.seconds / 2)
        mem_rows = []
        worst = 0.0
        for name in watched.pids:
            start, end = watched.at(name, steady), watched.samples[name][-1][1]
            growth = (end - start) / start if start else 0.0
            if name in ours:
                worst = max(worst, growth)
            cores = watched.cpu_share(name, args.seconds)
            mem_rows.append([name, watched.samples[name][0][1], start, end, f"{growth * 100:+.1f} %", cores])
        print(f"\nmemory (RSS MiB; steady state from t={steady:.0f} s)")
        print_table(["process", "at start", "steady start", "end", "growth", "CPU cores"], mem_rows)
        served = sum(len(v) for v in rec.latencies.values())
        print(f"\nserved {served} requests, {errors} errors ({rec.late} late), {outcome['contents']} contents "
              f"written and read back, {outcome['churned']} files churned")  # fmt: skip
        verdict = "met" if errors == 0 and worst <= 0.10 else "NOT met"
        print(f"goal (0 errors, RSS growth <= 10 %): {verdict}")
        if args.overload and rec.late:
            print(f"  ({rec.late} 'late': writes this client never sent because all its slots held retries; "
                  "the overload goals above do not count them)")  # fmt: skip
        print(json.dumps({
            "bench": "soak", "seconds": args.seconds, "served": served, "errors": errors,
            "capacity": {str(r[0]): r[1] for r in cap_rows},
            "p99_ms": {r[0]: r[4] for r in rows}, "rss_growth_max": worst, "overload": overload,
            "shed": dict(rec.shed),
        }))  # fmt: skip
        if args.keep:  # the servers too: their data dirs are kept while they run
            stack.pop_all()
            finish_workdir(work, keep=True)
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
