"""Change-to-catalogue latency of a continuous ``putplace-agent`` under a steady stream of
file changes, measured from outside and read from the agent's own histogram.

Setup: a fresh ``putplace-api`` (1 worker, SQLite, local storage) and a tree of ``--initial``
(default 2,000) small files, synced by a continuous agent (``python -m putplace_agent sync
TREE --metrics-port P``; inotify through watchfiles). Once its first scan is done, the API
holds every file and every agent queue is empty (the initial uploads are over), a writer
thread makes ``--rate`` (default 100) changes per second for ``--seconds`` (default 30) on a
fixed schedule: alternately a new file and a rewrite in place
of one of the initial files (each initial file at most once, so the agent's 1 s re-hash
cool-down of a file that keeps changing never applies). Every change writes 1-10 KiB of new
random bytes; its sha256 is known.

* **External measurement (every change):** from the writer's moment (after ``close()``) to the
  first poll that sees the record with the new sha256 at ``GET /files?hostname=...
  &changed_since=...`` (one request every ``--poll-ms`` = 50 ms, the window reaching 0.2 s
  before the previous poll; the resolution is the poll period). For a 1-in-10 sample, also
  until the record's ``has_file_content`` is true (``GET /get_file/{sha256}``): the content
  is stored too.
* **The agent's own figure:** ``putplace_agent_change_to_catalogue_seconds`` (from the watch
  event, i.e. after watchfiles' debounce, to record *and* content in the catalogue), read from
  ``/metrics`` before and after; quantiles interpolated within its buckets as Prometheus'
  ``histogram_quantile`` does.
* **Where work piles up:** the agent's ``putplace_agent_queue_depth`` gauges every 0.5 s (peaks
  printed; ``BENCH_QUEUE_TRACE=1`` prints every sample).

    .venv/bin/python bench/agent_latency.py [--rate 100] [--seconds 30] [--initial 2000]

Goal: p99 (external, record visible) < 2 s. The baseline is the writer's own schedule: the
achieved change rate is reported against the requested one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from _common import (
    ADMIN_KEY,
    cpu_seconds,
    finish_workdir,
    free_port,
    http_json,
    machine_line,
    print_table,
    putplace_server,
    temp_workdir,
)
from agent_common import (
    OtherLoad,
    add_common_args,
    agent_argv,
    agent_env,
    bucket_quantile,
    code_version,
    gauge,
    histogram,
    labelled,
    metrics_text,
    wait_quiet,
)

GOAL_P99_S = 2.0
NODE = "bench-latency"


def content(rng: random.Random, tag: str) -> bytes:
    size = rng.randint(1024, 10 * 1024)
    header = f"{tag} {time.time_ns()}\n".encode()
    return header + os.urandom(size - len(header))


def write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def queue_depths(text: str) -> dict[str, float]:
    return labelled(text, "putplace_agent_queue_depth", "queue")


class QueueSampler(threading.Thread):
    """The agent's queue depths every half second: where work piles up."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.wait(0.5):
            try:
                self.samples.append((time.monotonic() - t0, queue_depths(metrics_text(self.port))))
            except OSError:
                pass

    def peaks(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for _, depths in self.samples:
            for k, v in depths.items():
                out[k] = max(out.get(k, 0.0), v)
        return out


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]  # nearest rank


def wait_until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


class Poller(threading.Thread):
    """Watches the API for the records the writer expects; notes when each one shows up."""

    def __init__(self, base_url: str, period_s: float, sample_every: int) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=base_url, headers={"X-API-Key": ADMIN_KEY}, timeout=30)
        self.period = period_s
        self.sample_every = sample_every
        self.lock = threading.Lock()
        self.expected: dict[tuple[str, str], float] = {}  # (filepath, sha) -> write time (monotonic)
        self.content_wait: dict[str, float] = {}  # sha -> write time, for the sample
        self.latency: list[float] = []
        self.content_latency: list[float] = []
        self.polls = 0
        self.stop = threading.Event()
        self.n_expected = 0

    def expect(self, filepath: str, sha: str, when: float) -> None:
        with self.lock:
            self.expected[(filepath, sha)] = when
            self.n_expected += 1
            if self.n_expected % self.sample_every == 0:
                self.content_wait[sha] = when

    def pending(self) -> int:
        with self.lock:
            return len(self.expected) + len(self.content_wait)

    def run(self) -> None:
        since = time.time() - 1.0
        while not self.stop.is_set():
            started_wall = time.time()
            cursor = None
            items: list[dict[str, object]] = []
            while True:
                params: dict[str, object] = {
                    "hostname": NODE,
                    "changed_since": datetime.fromtimestamp(since, UTC).isoformat(),
                    "limit": 1000,
                }
                if cursor:
                    params["cursor"] = cursor
                page = self.http.get("/files", params=params).raise_for_status().json()
                items += page["items"]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            seen_at = time.monotonic()
            self.polls += 1
            with self.lock:
                for item in items:
                    when = self.expected.pop((str(item["filepath"]), str(item["sha256"])), None)
                    if when is not None:
                        self.latency.append(seen_at - when)
                waiting = list(self.content_wait.items())
            for sha, when in waiting:
                r = self.http.get(f"/get_file/{sha}")
                if r.status_code == 200 and r.json().get("has_file_content"):
                    seen = time.monotonic()
                    with self.lock:
                        self.content_latency.append(seen - when)
                        self.content_wait.pop(sha, None)
            since = started_wall - 0.2
            rest = self.period - (time.time() - started_wall)
            if rest > 0:
                self.stop.wait(rest)
        self.http.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=100.0, help="file changes per second")
    ap.add_argument("--seconds", type=float, default=30.0, help="how long the writer runs")
    ap.add_argument("--initial", type=int, default=2000, help="files in the tree before the writer starts")
    ap.add_argument("--poll-ms", type=float, default=50.0, help="period of the external poll of GET /files")
    ap.add_argument("--sample-every", type=int, default=10, help="1 change in N is also checked for its content")
    add_common_args(ap, "--hash-workers=1")
    args = ap.parse_args()
    changes = int(args.rate * args.seconds)
    if args.initial < changes // 2:
        sys.exit(f"error: --initial must be at least {changes // 2} (each initial file is rewritten at most once)")

    version = code_version()
    rng = random.Random(7)
    work = temp_workdir("agent-latency")
    tree = work / "tree"
    (tree / "old").mkdir(parents=True)
    (tree / "new").mkdir()
    for i in range(args.initial):
        write(tree / "old" / f"f{i:06d}.dat", content(rng, f"initial {i}"))

    agent: subprocess.Popen[bytes] | None = None
    metrics_port = free_port()
    try:
        with putplace_server(work / "data", work) as server:
            argv = agent_argv(
                str(tree),
                server.base_url,
                str(work / "state"),
                NODE,
                "--metrics-port",
                str(metrics_port),
                *args.agent_arg,
            )
            agent_log = open(work / "agent.log", "wb")  # noqa: SIM115 - closed below
            agent = subprocess.Popen(argv, env=agent_env(ADMIN_KEY), stdout=subprocess.DEVNULL, stderr=agent_log)

            def first_scan_done() -> bool:
                if agent is not None and agent.poll() is not None:
                    raise RuntimeError(f"the agent exited with {agent.returncode}; see {work / 'agent.log'}")
                try:
                    return gauge(metrics_text(metrics_port), "putplace_agent_last_scan_completed_timestamp_seconds") > 0
                except OSError:
                    return False

            wait_until(first_scan_done, 60, "the agent's first scan")
            wait_until(
                lambda: http_json("GET", server.base_url + "/stats")[1]["files"] >= args.initial,  # type: ignore[index]
                120,
                "the initial files at the API",
            )

            def settled() -> bool:  # every queue empty in two reads 0.5 s apart: the initial sync is over
                for _ in range(2):
                    if any(queue_depths(metrics_text(metrics_port)).values()):
                        return False
                    time.sleep(0.5)
                return True

            wait_until(settled, 300, "the agent's queues to empty (initial uploads)")
            before_text = metrics_text(metrics_port)
            h0, c0, s0 = histogram(before_text, "putplace_agent_change_to_catalogue_seconds")
            print(f"initial sync of {args.initial:,} files done; histogram count before: {c0:.0f}", flush=True)

            wait_quiet(args.wait_quiet, threshold_cores=0.3)  # the idle agent and API use a little
            poller = Poller(server.base_url, args.poll_ms / 1000, args.sample_every)
            poller.start()
            sampler = QueueSampler(metrics_port)
            sampler.start()
            agent_cpu0, api_cpu0 = cpu_seconds(agent.pid), cpu_seconds(server.pid)
            own0, others = time.process_time(), OtherLoad()
            late = 0
            t_start = time.monotonic()
            for k in range(changes):
                slot = t_start + k / args.rate
                now = time.monotonic()
                if slot > now:
                    time.sleep(slot - now)
                elif now - slot > 0.05:
                    late += 1
                if k % 2 == 0:
                    path = tree / "new" / f"f{k // 2:06d}.dat"
                else:
                    path = tree / "old" / f"f{k // 2:06d}.dat"
                data = content(rng, f"change {k}")
                write(path, data)
                poller.expect(str(path), hashlib.sha256(data).hexdigest(), time.monotonic())
            wrote_s = time.monotonic() - t_start
            achieved = changes / wrote_s
            print(
                f"writer: {changes:,} changes in {wrote_s:.2f} s = {achieved:.1f}/s ({late} late > 50 ms)", flush=True
            )
            try:
                wait_until(lambda: poller.pending() == 0, 60, "every change at the API")
            except RuntimeError as exc:
                print(f"warning: {exc}; {poller.pending()} still pending", file=sys.stderr)
            elapsed = time.monotonic() - t_start
            agent_cpu = cpu_seconds(agent.pid) - agent_cpu0
            api_cpu = cpu_seconds(server.pid) - api_cpu0
            own = time.process_time() - own0
            other_cores = others.cores(agent_cpu + api_cpu + own)
            # the histogram is observed after the content upload: give the last ones a moment
            deadline = time.monotonic() + 10
            while True:
                h1, c1, s1 = histogram(metrics_text(metrics_port), "putplace_agent_change_to_catalogue_seconds")
                if c1 - c0 >= changes or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            poller.stop.set()
            sampler.stop.set()
            poller.join(10)
            sampler.join(10)
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
            agent_log.close()
            agent = None
    finally:
        if agent is not None:
            agent.kill()
            agent.wait()
        finish_workdir(work, args.keep)

    lat = poller.latency
    missing = changes - len(lat)
    delta = [(le, c - dict(h0).get(le, 0.0)) for le, c in h1]
    h_count = c1 - c0
    ext_p50, ext_p99, ext_max = quantile(lat, 0.5), quantile(lat, 0.99), max(lat) if lat else float("nan")
    cl = poller.content_latency
    print()
    print(
        f"change-to-catalogue latency -- {machine_line()}, {args.rate:g} changes/s for {args.seconds:g} s "
        f"(half new files, half rewrites), {args.initial:,} files already synced"
    )
    print_table(
        ["measurement", "changes", "p50 s", "p90 s", "p99 s", "max s", "mean s"],
        [
            [
                f"external: record visible (GET /files every {args.poll_ms:g} ms)",
                len(lat),
                ext_p50,
                quantile(lat, 0.9),
                ext_p99,
                ext_max,
                statistics.fmean(lat) if lat else float("nan"),
            ],
            [
                f"external: content stored (1 in {args.sample_every})",
                len(cl),
                quantile(cl, 0.5),
                quantile(cl, 0.9),
                quantile(cl, 0.99),
                max(cl) if cl else float("nan"),
                statistics.fmean(cl) if cl else float("nan"),
            ],
            [
                "agent histogram (watch event -> record + content)",
                int(h_count),
                bucket_quantile(0.5, delta),
                bucket_quantile(0.9, delta),
                bucket_quantile(0.99, delta),
                "",
                (s1 - s0) / h_count if h_count else float("nan"),
            ],
        ],
    )
    print("agent histogram buckets (this window): " + ", ".join(f"<={le:g}: {c:.0f}" for le, c in delta if c))
    print(
        f"writer {achieved:.1f} changes/s (asked {args.rate:g}); CPU over {elapsed:.1f} s: agent {agent_cpu:.1f} s "
        f"({100 * agent_cpu / elapsed:.0f}%), API {api_cpu:.1f} s ({100 * api_cpu / elapsed:.0f}%), "
        f"this script (writer + poller) {own:.1f} s, other programs {100 * other_cores:.0f}% of a core; "
        f"{poller.polls} polls"
    )
    print(f"code: {version}")
    peaks = sampler.peaks()
    print("agent queue depth, peak of 0.5 s samples: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(peaks.items())))
    if os.environ.get("BENCH_QUEUE_TRACE"):
        for t, depths in sampler.samples:
            print(f"  t={t:5.1f}s " + " ".join(f"{k}={v:.0f}" for k, v in sorted(depths.items())))
    if missing:
        print(f"warning: {missing} changes never showed up at the API within 60 s (counted as missing)")
    ok = not missing and ext_p99 < GOAL_P99_S
    print(
        f"p99 change-to-catalogue (external) = {ext_p99:.3f} s (goal < {GOAL_P99_S:g} s) -> {'PASS' if ok else 'FAIL'}"
    )
    print(
        json.dumps(
            {
                "benchmark": "agent_latency",
                "rate": args.rate,
                "achieved_rate": round(achieved, 1),
                "seconds": args.seconds,
                "changes": changes,
                "seen": len(lat),
                "external_p50_s": round(ext_p50, 3),
                "external_p99_s": round(ext_p99, 3),
                "external_max_s": round(ext_max, 3),
                "content_p50_s": round(quantile(cl, 0.5), 3),
                "content_p99_s": round(quantile(cl, 0.99), 3),
                "histogram_count": int(h_count),
                "histogram_p50_s": round(bucket_quantile(0.5, delta), 3),
                "histogram_p99_s": round(bucket_quantile(0.99, delta), 3),
                "peak_queue_depth": peaks,
                "other_cpu_pct": round(100 * other_cores, 1),
                "code": version,
                "agent_cpu_pct": round(100 * agent_cpu / elapsed, 1),
                "api_cpu_pct": round(100 * api_cpu / elapsed, 1),
                "goal_p99_s": GOAL_P99_S,
                "pass": ok,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
