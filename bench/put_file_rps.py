"""Requests/s of ``POST /put_file`` on one putplace-api process (1 worker, SQLite, local
storage) against a bare FastAPI JSON endpoint (bench/bare_app.py) under the same uvicorn.

Load generator: wrk (C, epoll), one thread, in its own process, so that on a 2-core
machine the server under test has one core and the load generator the other. Each
server gets the same connections, warm-up and measured duration; rounds alternate
bare/putplace so that drift of the machine hits both alike; the median round counts.
Every request names a distinct (hostname, filepath) and a distinct sha256, so every
put_file is an insert of a file record and of a content record.

    .venv/bin/python bench/put_file_rps.py [--connections 32] [--seconds 10] [--rounds 3]

Goal: putplace / bare >= 0.5. Needs wrk (apt-get install -y wrk).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from _common import (
    SINGLE_BODY,
    bare_server,
    cpu_seconds,
    finish_workdir,
    machine_line,
    need_wrk,
    print_table,
    putplace_server,
    run_wrk,
    settled_file_count,
    temp_workdir,
    thread_cpu_delta,
    thread_cpu_seconds,
)

GOAL = 0.5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections (both servers)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured duration of one round")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured load before each round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per server, alternating; the median counts")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (server logs, database)")
    args = ap.parse_args()
    need_wrk()

    work = temp_workdir("rps")
    results: dict[str, list[dict[str, float]]] = {"bare": [], "putplace": []}
    files_registered = 0
    try:
        for rnd in range(args.rounds):
            for name in ("bare", "putplace"):
                if name == "bare":
                    server = bare_server(work)
                else:
                    server = putplace_server(work / f"data-{rnd}", work)
                with server:
                    tag = f"{name}-r{rnd}"
                    warm = run_wrk(
                        server.base_url,
                        "/put_file",
                        SINGLE_BODY,
                        connections=args.connections,
                        seconds=args.warmup,
                        prefix=f"{tag}-warm",
                        workdir=work,
                    )
                    cpu0, thr0 = cpu_seconds(server.pid), thread_cpu_seconds(server.pid)
                    r = run_wrk(
                        server.base_url,
                        "/put_file",
                        SINGLE_BODY,
                        connections=args.connections,
                        seconds=args.seconds,
                        prefix=tag,
                        workdir=work,
                    )
                    cpu = cpu_seconds(server.pid) - cpu0
                    thr = thread_cpu_delta(thr0, thread_cpu_seconds(server.pid))
                    loop_cpu = thr.get("event loop (main)", 0.0)
                    if name == "putplace":
                        on_server, acked = settled_file_count(server.base_url), warm.requests + r.requests
                        # every acknowledged put_file is a new record; wrk may stop with one
                        # request per connection in flight, which the server still completes
                        if not acked <= on_server <= acked + 2 * args.connections:
                            print(
                                f"error: server holds {on_server} records, wrk saw {acked} put_file acknowledged",
                                file=sys.stderr,
                            )
                            return 1
                        files_registered += on_server
                if r.errors or warm.errors:
                    print(f"error: {r.errors} failed requests against {name}: {r.raw}", file=sys.stderr)
                    return 1
                results[name].append(
                    {
                        "rps": r.rps,
                        "p50_ms": r.p50_ms,
                        "p99_ms": r.p99_ms,
                        "server_cpu_pct": 100 * cpu / r.seconds,
                        "cpu_ms_per_req": 1000 * cpu / max(1, r.requests),
                        "loop_cpu_pct": 100 * loop_cpu / r.seconds,
                        "threads_cpu_pct": 100 * (cpu - loop_cpu) / r.seconds,
                        "requests": r.requests,
                        "wrk_cpu_pct": 100 * r.client_cpu_s / r.seconds,
                        # CPU used by processes other than this server and wrk (other work on the machine)
                        "other_cpu_pct": 100 * max(0.0, r.machine_busy_s - cpu - r.client_cpu_s) / r.seconds,
                    }
                )
                print(
                    f"  round {rnd + 1} {name:9s} {r.rps:9,.0f} req/s  p50 {r.p50_ms:6.2f} ms  "
                    f"p99 {r.p99_ms:6.2f} ms  server CPU {100 * cpu / r.seconds:5.1f}%  "
                    f"other CPU {results[name][-1]['other_cpu_pct']:5.1f}%",
                    flush=True,
                )
                time.sleep(0.5)
    finally:
        finish_workdir(work, args.keep)

    def med(name: str, k: str) -> float:
        return statistics.median(x[k] for x in results[name])

    bare, pp = med("bare", "rps"), med("putplace", "rps")
    ratio = pp / bare
    print()
    print(
        f"put_file requests/s -- {machine_line()}, wrk 1 thread, {args.connections} connections, "
        f"{args.warmup:g}s warm-up + {args.seconds:g}s x {args.rounds} rounds (median)"
    )
    print_table(
        ["server", "req/s", "p50 ms", "p99 ms", "server CPU %", "CPU ms/req", "wrk CPU %", "other CPU %"],
        [
            [
                n,
                med(k, "rps"),
                med(k, "p50_ms"),
                med(k, "p99_ms"),
                med(k, "server_cpu_pct"),
                med(k, "cpu_ms_per_req"),
                med(k, "wrk_cpu_pct"),
                med(k, "other_cpu_pct"),
            ]
            for n, k in (("bare FastAPI", "bare"), ("putplace /put_file", "putplace"))
        ],
    )
    ok = ratio >= GOAL
    cpu_ratio = med("bare", "cpu_ms_per_req") / med("putplace", "cpu_ms_per_req")
    other = max(med("bare", "other_cpu_pct"), med("putplace", "other_cpu_pct"))
    print(f"ratio putplace/bare = {ratio:.3f} (goal >= {GOAL}) -> {'PASS' if ok else 'FAIL'}")
    for n, k in (("bare FastAPI", "bare"), ("putplace", "putplace")):
        print(
            f"  {n}: server CPU split -- event-loop thread {med(k, 'loop_cpu_pct'):.0f}% of a core, "
            f"other threads (SQLite, thread pool) {med(k, 'threads_cpu_pct'):.0f}%"
        )
    print(
        f"CPU-cost ratio (bare CPU ms/req / putplace CPU ms/req) = {cpu_ratio:.3f}  "
        "(what req/s would give with a whole core each)"
    )
    if other > 20:
        print(
            f"warning: other processes used up to {other:.0f}% CPU during the rounds; "
            "req/s figures are noisy, the CPU-cost ratio less so",
            file=sys.stderr,
        )
    print(
        json.dumps(
            {
                "benchmark": "put_file_rps",
                "connections": args.connections,
                "seconds": args.seconds,
                "rounds": args.rounds,
                "bare_rps": round(bare, 1),
                "putplace_rps": round(pp, 1),
                "putplace_p99_ms": round(med("putplace", "p99_ms"), 2),
                "putplace_cpu_ms_per_req": round(med("putplace", "cpu_ms_per_req"), 3),
                "bare_cpu_ms_per_req": round(med("bare", "cpu_ms_per_req"), 3),
                "files_registered": files_registered,
                "cpu_cost_ratio": round(cpu_ratio, 3),
                "other_cpu_pct_max": round(other, 1),
                "ratio": round(ratio, 3),
                "goal": GOAL,
                "pass": ok,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
