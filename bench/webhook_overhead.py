"""What webhooks cost the requests that cause events, on one putplace-api process (1 worker,
SQLite, local storage).

* **Load:** ``POST /put_file`` of a new path whose content is stored already (each one a
  ``file.duplicate`` event), ``--connections`` (16) requests in flight from a closed-loop client
  (httpx, asyncio) for ``--seconds`` (6) per round.
* **Baseline (same run):** rounds with no subscription at all. They alternate, ``--rounds`` (3)
  of each mode, with rounds where a subscription wants only ``file.deleted`` (so the events are
  looked up in the cached list and dropped: the price of having webhooks configured) and rounds
  where one wants ``file.duplicate`` (every request queues an event in the database before it
  answers, and the worker of the same process delivers it to a receiver in another process).
* **Reported:** requests/s and API CPU per request by mode (median round), deliveries received,
  and the CPU used by other processes.

    .venv/bin/python bench/webhook_overhead.py [--connections 16] [--seconds 6] [--rounds 3]

Goal: CPU per request with an unrelated subscription / with none <= 1.10 (webhooks configured but
not wanted cost nothing measurable). The cost with a wanted event is reported, not judged: it is
one more database write per request, plus the delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

import httpx
from _common import (
    ADMIN_KEY,
    cpu_seconds,
    machine_busy_seconds,
    machine_line,
    print_table,
    putplace_server,
    temp_workdir,
)

GOAL = 1.10
MODES = ("none", "unrelated", "wanted")

# The receiver, in its own process: answers 204 to every POST, counts them, prints the count on SIGTERM.
_RECEIVER = """
import signal, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
count = 0
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        global count
        self.rfile.read(int(self.headers["Content-Length"]))
        count += 1
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
server = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
signal.signal(signal.SIGTERM, lambda *_: (print(count, flush=True), sys.exit(0)))
server.serve_forever()
"""

DATA = b"stored once, announced many times\n"
SHA = hashlib.sha256(DATA).hexdigest()


def body(path: str) -> dict[str, object]:
    return {
        "filepath": path, "hostname": "bench", "ip_address": "10.0.0.1", "sha256": SHA, "file_size": len(DATA),
        "file_mode": 0o100644, "file_uid": 0, "file_gid": 0, "file_mtime": 1.0, "file_atime": 1.0, "file_ctime": 1.0,
    }  # fmt: skip


async def load(url: str, connections: int, seconds: float) -> int:
    done = 0
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": ADMIN_KEY}, limits=limits, timeout=60) as c:

        async def one() -> None:
            nonlocal done
            while time.monotonic() < stop:
                r = await c.post("/put_file", json=body(f"/bench/{uuid.uuid4().hex}"))
                if r.status_code != 201:
                    raise RuntimeError(f"put_file answered {r.status_code}: {r.text}")
                done += 1

        await asyncio.gather(*(one() for _ in range(connections)))
    return done


def delivered_so_far(c: httpx.Client) -> float:
    """Deliveries the API has had acknowledged (its own counter)."""
    total = 0.0
    for line in c.get("/metrics").text.splitlines():
        if line.startswith("putplace_webhook_deliveries_total{") and 'outcome="delivered"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    workdir = temp_workdir("webhooks")
    receiver = subprocess.Popen([sys.executable, "-c", _RECEIVER], stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None
    hook_url = f"http://127.0.0.1:{receiver.stdout.readline().strip()}/hook"
    rows: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}  # (requests/s, CPU ms per request)
    busy_before, started = machine_busy_seconds(), time.monotonic()
    server_cpu = 0.0
    with putplace_server(workdir / "data", workdir) as api:
        with httpx.Client(base_url=api.base_url, headers={"X-API-Key": ADMIN_KEY}, timeout=60) as c:
            c.post("/put_file", json=body("/seed")).raise_for_status()
            c.post(f"/upload_file/{SHA}", content=DATA).raise_for_status()
            asyncio.run(load(api.base_url, args.connections, args.seconds / 2))  # warm-up, unmeasured
            cpu_start = cpu_seconds(api.pid)
            expected = 0
            for _ in range(args.rounds):
                for mode in MODES:
                    sub = None
                    if mode != "none":
                        events = ["file.deleted"] if mode == "unrelated" else ["file.duplicate"]
                        sub = c.post("/webhooks/subscriptions", json={"url": hook_url, "events": events}).json()
                    before = cpu_seconds(api.pid)
                    t0 = time.monotonic()
                    n = asyncio.run(load(api.base_url, args.connections, args.seconds))
                    elapsed = time.monotonic() - t0
                    rows[mode].append((n / elapsed, 1000 * (cpu_seconds(api.pid) - before) / n))
                    if sub is not None:
                        if mode == "wanted":  # let the worker catch up, so its work is counted in this mode
                            expected += n
                            deadline = time.monotonic() + 300
                            while delivered_so_far(c) < expected:
                                if time.monotonic() > deadline:
                                    raise RuntimeError(f"only {delivered_so_far(c)} of {expected} events delivered")
                                time.sleep(0.2)
                            rows[mode][-1] = (n / elapsed, 1000 * (cpu_seconds(api.pid) - before) / n)
                        c.delete(f"/webhooks/subscriptions/{sub['id']}").raise_for_status()
            server_cpu = cpu_seconds(api.pid) - cpu_start
    receiver.terminate()
    delivered = int((receiver.communicate(timeout=10)[0] or "0").strip().splitlines()[-1])
    seconds = time.monotonic() - started
    other = machine_busy_seconds() - busy_before - server_cpu

    print(f"machine: {machine_line()}")
    med = {m: (statistics.median(r[0] for r in rows[m]), statistics.median(r[1] for r in rows[m])) for m in MODES}
    print_table(
        ["subscription", "rounds", "requests/s", "API CPU ms/request", "CPU vs none"],
        [[m, len(rows[m]), med[m][0], med[m][1], med[m][1] / med["none"][1]] for m in MODES],
    )
    print(f"  deliveries received: {delivered:,}; other processes used {100 * max(0.0, other) / seconds:.0f} % CPU")
    ratio = med["unrelated"][1] / med["none"][1]
    ok = ratio <= GOAL
    print(
        f"CPU per request, unrelated subscription / none = {ratio:.2f} (goal <= {GOAL:g}) -> {'PASS' if ok else 'FAIL'}"
    )
    print(
        json.dumps(
            {
                "benchmark": "webhook_overhead",
                "connections": args.connections,
                "rounds": args.rounds,
                **{f"{m}_rps": round(med[m][0], 1) for m in MODES},
                **{f"{m}_cpu_ms": round(med[m][1], 3) for m in MODES},
                "wanted_cpu_ratio": round(med["wanted"][1] / med["none"][1], 2),
                "delivered": delivered,
                "other_cpu_pct": round(100 * max(0.0, other) / seconds, 1),
                "ratio": round(ratio, 2),
                "goal": GOAL,
                "pass": ok,
            }
        )
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
