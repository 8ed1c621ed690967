"""A quiet key's latency while a noisy key retries far over its rate limit, against the same
quiet key's latency with the noisy client paused, on one putplace-api process (1 worker,
SQLite, local storage).

* **Noisy:** a key limited to ``--noisy-rate`` (2) requests/s, driven by a closed-loop client
  in a process of its own: ``--connections`` (32) requests in flight, each sent again as soon
  as its answer (mostly 429) arrives. Raw HTTP/1.1 on asyncio streams, not httpx: a client
  that spends little CPU per request loads the server more and competes less with it and with
  the quiet client for the machine's cores.
* **Quiet:** a key limited to 1,000 requests/s, ``GET /stats`` once every ``--period-ms`` (20)
  over one keep-alive connection (httpx), ``--samples`` (80) requests per round.
* **Baseline (same run):** the same quiet rounds with the noisy client stopped (SIGSTOP),
  alternating with rounds where it runs (SIGCONT), ``--rounds`` (5) of each, so a change in the
  machine's load hits both alike. One unmeasured warm-up round first.
* **Reported:** quiet p50/p99 alone and under the noisy key, the noisy client's answers by
  status, the server's rate-limit store calls (``take_tokens`` in
  ``putplace_backend_operation_duration_seconds``) per 429, and the CPU used by other processes.

    .venv/bin/python bench/noisy_key.py [--connections 32] [--rounds 5] [--samples 80]

Goal: quiet p99 under the noisy key / quiet p99 alone <= 2. The mechanism this measures (a
refused key is answered from memory, and its 429s held) is asserted, untimed, by
tests/api/test_ratelimit.py::test_a_refused_key_is_answered_from_memory_and_held.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time

import httpx
from _common import (
    cpu_seconds,
    finish_workdir,
    http_json,
    machine_busy_seconds,
    machine_line,
    print_table,
    putplace_server,
    temp_workdir,
)

GOAL = 2.0

# The noisy client: ``connections`` requests in flight with one key until SIGTERM, then it
# prints how many answers of each status it got.
_HAMMER = """
import asyncio, collections, signal, sys
host, port, key, connections = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
request = f"GET /stats HTTP/1.1\\r\\nHost: {host}\\r\\nX-API-Key: {key}\\r\\n\\r\\n".encode()
codes = collections.Counter()
async def one():
    reader, writer = await asyncio.open_connection(host, port)
    while True:
        writer.write(request)
        head = await reader.readuntil(b"\\r\\n\\r\\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\\r\\n")[0])
        await reader.readexactly(length)
        codes[int(head.split(b" ", 2)[1])] += 1
async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [asyncio.create_task(one()) for _ in range(connections)]
    print("ready", flush=True)
    await stop.wait()
    print(dict(codes), flush=True)
asyncio.run(main())
"""

TAKE_TOKENS = (
    'putplace_backend_operation_duration_seconds_count{backend="database",operation="take_tokens",outcome="ok"}'
)


def quiet_latencies(c: httpx.Client, n: int, period: float) -> list[float]:
    """``n`` requests, one every ``period`` seconds (a modest, steady client): their latencies."""
    out = []
    for _ in range(n):
        started = time.perf_counter()
        r = c.get("/stats")
        elapsed = time.perf_counter() - started
        if r.status_code != 200:
            raise RuntimeError(f"the quiet key got {r.status_code}: {r.text}")
        out.append(elapsed)
        time.sleep(max(0.0, period - elapsed))
    return out


def pct(samples: list[float], q: float) -> float:
    return sorted(samples)[math.ceil(q * len(samples)) - 1]


def store_calls(base_url: str, key: str) -> float:
    text = httpx.get(base_url + "/metrics", headers={"X-API-Key": key}, timeout=30).text
    for line in text.splitlines():
        if line.startswith(TAKE_TOKENS + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=32, help="the noisy client's requests in flight")
    ap.add_argument("--noisy-rate", type=float, default=2.0, help="the noisy key's limit, requests/s")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of each (quiet alone, quiet + noisy), alternating")
    ap.add_argument("--samples", type=int, default=80, help="quiet requests per round")
    ap.add_argument("--period-ms", type=float, default=20.0, help="the quiet client's request period")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (server log, database)")
    args = ap.parse_args()
    period = args.period_ms / 1000

    work = temp_workdir("noisy")
    alone: list[float] = []
    noisy: list[float] = []
    try:
        with putplace_server(work / "data", work) as server:
            keys = {}
            for name, scopes, rate in (
                ("noisy", ["read"], args.noisy_rate),
                ("quiet", ["read"], 1000.0),
                ("metrics", ["metrics"], None),
            ):
                status, body = http_json(
                    "POST", server.base_url + "/api_keys", {"name": name, "scopes": scopes, "rate_limit": rate}
                )
                assert status == 201 and isinstance(body, dict), (status, body)
                keys[name] = str(body["api_key"])
            hammer = subprocess.Popen(
                [sys.executable, "-c", _HAMMER, "127.0.0.1", str(server.port), keys["noisy"], str(args.connections)],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert hammer.stdout is not None and hammer.stdout.readline().strip() == "ready"
                calls0 = store_calls(server.base_url, keys["metrics"])
                busy0, server0, hammer0 = machine_busy_seconds(), cpu_seconds(server.pid), cpu_seconds(hammer.pid)
                own0, started = time.process_time(), time.monotonic()
                with httpx.Client(base_url=server.base_url, headers={"X-API-Key": keys["quiet"]}, timeout=30) as c:
                    quiet_latencies(c, 50, 0.01)  # warm-up: connection, key lookup, caches
                    for rnd in range(args.rounds):
                        hammer.send_signal(signal.SIGSTOP)
                        time.sleep(0.2)
                        alone += quiet_latencies(c, args.samples, period)
                        hammer.send_signal(signal.SIGCONT)
                        time.sleep(0.2)
                        noisy += quiet_latencies(c, args.samples, period)
                        print(
                            f"  round {rnd + 1}: quiet p99 alone {1000 * pct(alone[-args.samples :], 0.99):.1f} ms, "
                            f"with the noisy key {1000 * pct(noisy[-args.samples :], 0.99):.1f} ms",
                            flush=True,
                        )
                seconds = time.monotonic() - started
                server_cpu, hammer_cpu = cpu_seconds(server.pid) - server0, cpu_seconds(hammer.pid) - hammer0
                other = machine_busy_seconds() - busy0 - server_cpu - hammer_cpu - (time.process_time() - own0)
                calls = store_calls(server.base_url, keys["metrics"]) - calls0
            finally:
                hammer.send_signal(signal.SIGCONT)
                hammer.terminate()
                out, _ = hammer.communicate(timeout=30)
    except (RuntimeError, AssertionError, httpx.HTTPError) as exc:
        print(f"error: {exc!r}", file=sys.stderr)
        return 1
    finally:
        finish_workdir(work, args.keep)

    codes = ast.literal_eval(out.strip().splitlines()[-1])
    refused, allowed = codes.get(429, 0), codes.get(200, 0)
    if refused <= 10 * allowed:
        print(f"error: the noisy key was not refused far more than allowed: {codes}", file=sys.stderr)
        return 1
    ratio = pct(noisy, 0.99) / pct(alone, 0.99)
    print()
    print(
        f"a quiet key beside a noisy one -- {machine_line()}, noisy: {args.connections} connections at "
        f"{args.noisy_rate:g} req/s allowed; quiet: 1 request / {args.period_ms:g} ms, "
        f"{args.samples} x {args.rounds} rounds each way"
    )
    print_table(
        ["quiet key", "requests", "p50 ms", "p99 ms", "max ms"],
        [
            [label, len(s), 1000 * statistics.median(s), 1000 * pct(s, 0.99), 1000 * max(s)]
            for label, s in (("alone (noisy stopped)", alone), ("beside the noisy key", noisy))
        ],
    )
    print(
        f"  noisy key: {refused:,} answered 429, {allowed:,} 200 ({refused / (seconds / 2):,.0f} 429/s while running); "
        f"rate-limit store calls (both keys) {calls:,.0f} ({calls / max(1, refused):.4f} per 429)"
    )
    print(
        f"  CPU over {seconds:.1f} s: server {100 * server_cpu / seconds:.0f} %, noisy client "
        f"{100 * hammer_cpu / seconds:.0f} %, other processes {100 * max(0.0, other) / seconds:.0f} % "
        f"(of {100 * (os.cpu_count() or 1)} %)"
    )
    ok = ratio <= GOAL
    print(f"ratio p99 beside noisy / p99 alone = {ratio:.2f} (goal <= {GOAL:g}) -> {'PASS' if ok else 'FAIL'}")
    print(
        json.dumps(
            {
                "benchmark": "noisy_key",
                "connections": args.connections,
                "noisy_rate": args.noisy_rate,
                "rounds": args.rounds,
                "samples": args.samples,
                "quiet_alone_p99_ms": round(1000 * pct(alone, 0.99), 2),
                "quiet_noisy_p99_ms": round(1000 * pct(noisy, 0.99), 2),
                "noisy_429": refused,
                "noisy_200": allowed,
                "store_calls_per_429": round(calls / max(1, refused), 4),
                "other_cpu_pct": round(100 * max(0.0, other) / seconds, 1),
                "ratio": round(ratio, 2),
                "goal": GOAL,
                "pass": ok,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
