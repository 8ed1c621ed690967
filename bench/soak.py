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

    .venv/bin/python bench/soak.py [--seconds 600] [--put-rate 40] [--read-rate 40] [--agents 2] [--churn 5]
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
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import cpu_seconds, machine_line, print_table, temp_workdir  # noqa: E402
from tests.agent.conftest import Agent  # noqa: E402
from tests.api.conftest import ADMIN_KEY  # noqa: E402
from tests.processes import ApiProcess  # noqa: E402
from tests.servers import SERVERS, S3Server, ferretdb  # noqa: E402
from tests.servers.base import make_workdir  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

HOSTS = [f"soak-host-{i}" for i in range(8)]
SAMPLE_SECONDS = 10.0
WARMUP_SECONDS = 60.0


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


class Load:
    def __init__(self, url: str, write_key: str, read_key: str, rec: Recorder, paths: int, seed: int = 7) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        self.w = httpx.AsyncClient(base_url=url, headers={"X-API-Key": write_key}, timeout=30, limits=limits)
        self.r = httpx.AsyncClient(base_url=url, headers={"X-API-Key": read_key}, timeout=30, limits=limits)
        self.rec = rec
        self.rng = random.Random(seed)
        self.sent: dict[str, bytes] = {}  # sha -> bytes, for contents the server stored
        self.verified: set[str] = set()
        self.current: dict[tuple[str, str], str] = {}  # (host, path) -> sha256, as written
        self.refs: Counter[str] = Counter()  # current records per sha256
        self.paths = paths
        self.in_flight: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        await self.w.aclose()
        await self.r.aclose()

    async def put_and_upload(self, host: str, path: str, data: bytes, kind: str, scheduled: float) -> None:
        m = meta(host, path, data)
        r = await self.w.post("/put_file", json=m)
        if r.status_code != 201:
            return self.rec.error(kind, f"put_file {r.status_code} {r.text[:200]}")
        if r.json()["upload_required"]:
            u = await self.w.post(
                f"/upload_file/{m['sha256']}", content=data, headers={"Content-Type": "application/octet-stream"}
            )
            if u.status_code != 200:
                return self.rec.error(kind, f"upload_file {u.status_code} {u.text[:200]}")
        self.sent[m["sha256"]] = data
        old = self.current.get((host, path))
        if old is not None:
            self.refs[old] -= 1
        self.current[(host, path)] = m["sha256"]
        self.refs[m["sha256"]] += 1
        self.rec.ok(kind, scheduled)

    async def write_one(self, scheduled: float) -> None:
        host = self.rng.choice(HOSTS)
        if self.sent and self.rng.random() < 0.25:
            data = self.sent[self.rng.choice(list(self.sent))]  # another host's content: deduplicated
        else:
            data = content_for(self.rng)
        # A bounded set of paths: the catalogue grows to it, then writes replace records (and
        # history grows), as on nodes whose files change.
        n = self.rng.randrange(self.paths)
        await self.put_and_upload(host, f"/soak/d{n % 100}/f{n}.bin", data, "write", scheduled)

    async def read_one(self, scheduled: float) -> None:
        which = self.rng.random()
        if not self.sent or which < 0.34:
            r = await self.r.get("/files", params={"hostname": self.rng.choice(HOSTS), "limit": 50})
            kind = "read:list"
        elif which < 0.67:
            sha = self.rng.choice(list(self.sent))
            r = await self.r.get(f"/get_file/{sha}")
            kind = "read:get_file"
            if r.status_code == 404 and self.refs[sha] <= 0:
                return self.rec.ok(kind, scheduled)  # every path naming it was rewritten since: right
        else:
            sha = self.rng.choice(list(self.sent))
            r = await self.r.get(f"/content/{sha}")
            kind = "read:content"
            if r.status_code == 200:
                if hashlib.sha256(r.content).hexdigest() != sha:
                    return self.rec.error(kind, f"content of {sha} does not hash to its sha")
                self.verified.add(sha)
        if r.status_code != 200:
            return self.rec.error(kind, f"{r.status_code} {r.text[:200]}")
        self.rec.ok(kind, scheduled)

    async def _guarded(self, job: Any, kind: str, scheduled: float) -> None:
        try:
            await job(scheduled)
        except httpx.HTTPError as exc:
            self.rec.error(kind, f"{type(exc).__name__}: {exc}")

    async def at_rate(self, job: Any, kind: str, rate: float, until: float, cap: int = 256) -> None:
        """Start ``job`` ``rate`` times a second on a fixed schedule until ``until`` (monotonic)."""
        interval = 1.0 / rate
        scheduled = time.monotonic()
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
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, timeout=30, limits=limits) as c:
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
    load = Load(api.url, write_key, read_key, rec, args.paths_per_host)
    until = rec.t0 + args.seconds

    async def sampler() -> None:
        while time.monotonic() < until:
            watched.sample(time.monotonic() - rec.t0)
            elapsed = time.monotonic() - rec.t0
            done = sum(len(v) for v in rec.latencies.values())
            errors = sum(rec.errors.values())
            print(f"  {elapsed:5.0f}/{args.seconds:.0f} s  requests {done}  errors {errors}  late {rec.late}",
                  file=sys.stderr, flush=True)  # fmt: skip
            await asyncio.sleep(SAMPLE_SECONDS)
        watched.sample(time.monotonic() - rec.t0)

    results = await asyncio.gather(
        load.at_rate(load.write_one, "write", args.put_rate, until),
        load.at_rate(load.read_one, "read", args.read_rate, until),
        churn([a.root for a in agents], args.churn, until) if agents else asyncio.sleep(0, 0),
        sampler(),
    )
    await load.drain()
    # Every content the writers stored is read back once more, whatever the readers sampled.
    for sha, data in list(load.sent.items()):
        if sha in load.verified:
            continue
        r = await load.r.get(f"/content/{sha}")
        if r.status_code != 200 or r.content != data:
            rec.error("final-check", f"content {sha}: {r.status_code}")
    await load.close()
    return {"rec": rec, "churned": results[2] or 0, "contents": len(load.sent)}


def tree_shas(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def converged(api: ApiProcess, agent: Agent) -> bool:
    try:
        return api.catalogue(agent.node) == tree_shas(agent.root)
    except httpx.HTTPError:
        return False


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
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    args = ap.parse_args()

    work = temp_workdir("soak")
    print(machine_line())
    with ExitStack() as stack:
        for name in ("ferretdb", "minio"):
            SERVERS[name].install()
        db = ferretdb.start(make_workdir("ferretdb"), log_path=work / "ferretdb.log", backend="postgresql")
        stack.callback(db.stop)
        s3_server = SERVERS["minio"].start(make_workdir("minio"), log_path=work / "minio.log")
        stack.callback(s3_server.stop)
        s3 = S3Server.from_env("minio", s3_server.env)
        assert s3 is not None
        bucket = s3.create_bucket("soak")
        (work / "api").mkdir()
        api = ApiProcess(
            work / "api",
            env={
                "PUTPLACE_WORKERS": str(args.workers),
                "PUTPLACE_DATABASE_URL": next(iter(db.env.values())).rstrip("/") + "/putplace_soak",
                "PUTPLACE_STORAGE_URL": f"s3://{bucket}/content/",
                "PUTPLACE_S3_ENDPOINT_URL": s3.endpoint_url,
                "PUTPLACE_S3_ACCESS_KEY_ID": s3.access_key,
                "PUTPLACE_S3_SECRET_ACCESS_KEY": s3.secret_key,
                "PUTPLACE_S3_REGION": s3.region,
            },
        )
        api.start()
        stack.callback(api.stop)
        assert api.process is not None and api.process.popen is not None
        api_pid = api.process.pid

        print(f"capacity: {args.connections} clients, {args.capacity_seconds:g} s each", flush=True)
        cap_rows = asyncio.run(capacity(api.url, ADMIN_KEY, args))
        print_table(["closed loop", "req/s", "ratio", "p50 ms", "p99 ms", "errors"], cap_rows)
        # A fixed rate well under what the machine sustains: a soak looks for leaks and drift,
        # not for the knee (the capacity rows above are that).
        args.put_rate = args.put_rate or round(max(1.0, args.load * cast(float, cap_rows[2][1])), 1)
        args.read_rate = args.read_rate or args.put_rate

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
        outcome = asyncio.run(soak(api, agents, watched, args))
        rec: Recorder = outcome["rec"]
        for agent in agents:
            try:
                wait_until(partial(converged, api, agent), 120, f"{agent.node}'s catalogue to equal its tree")
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
        print(json.dumps({
            "bench": "soak", "seconds": args.seconds, "served": served, "errors": errors,
            "capacity": {str(r[0]): r[1] for r in cap_rows},
            "p99_ms": {r[0]: r[4] for r in rows}, "rss_growth_max": worst,
        }))  # fmt: skip
        if args.keep:
            print(f"kept: {work}", file=sys.stderr)
            stack.pop_all()
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
