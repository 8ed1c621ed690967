"""Files/s registered through ``POST /put_files`` in batches against one ``POST /put_file``
request per file, on one putplace-api process (1 worker, SQLite, local storage).

Both modes use the same client (wrk, one thread, its own process), the same number of
connections, warm-up and measured duration, and a fresh data dir each; rounds alternate
the two modes and the median round counts. Every file names a distinct path and sha256,
so every file is an insert. The server's own count (/stats) is checked against what the
client saw acknowledged.

    .venv/bin/python bench/put_files_batch.py [--batch 1000] [--connections 4] [--seconds 10]

Goal: batched files/s / single files/s >= 10. Needs wrk (apt-get install -y wrk).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from _common import (
    SINGLE_BODY,
    batch_body,
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

GOAL = 10.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1000, help="files per /put_files request (max 10000)")
    ap.add_argument("--connections", type=int, default=4, help="concurrent connections (both modes)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured duration of one round")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured load before each round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per mode, alternating; the median counts")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (server logs, databases)")
    args = ap.parse_args()
    need_wrk()

    modes = {
        "single": ("/put_file", SINGLE_BODY, 1),
        "batch": ("/put_files", batch_body(args.batch), args.batch),
    }
    work = temp_workdir("batch")
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    try:
        for rnd in range(args.rounds):
            for mode, (path, snippet, per_request) in modes.items():
                with putplace_server(work / f"data-{mode}-{rnd}", work) as server:
                    tag = f"{mode}-r{rnd}"
                    warm = run_wrk(
                        server.base_url,
                        path,
                        snippet,
                        connections=args.connections,
                        seconds=args.warmup,
                        prefix=f"{tag}-warm",
                        workdir=work,
                        timeout_s=60,
                    )
                    before = settled_file_count(server.base_url)
                    cpu0, thr0 = cpu_seconds(server.pid), thread_cpu_seconds(server.pid)
                    r = run_wrk(
                        server.base_url,
                        path,
                        snippet,
                        connections=args.connections,
                        seconds=args.seconds,
                        prefix=tag,
                        workdir=work,
                        timeout_s=60,
                    )
                    cpu = cpu_seconds(server.pid) - cpu0
                    thr = thread_cpu_delta(thr0, thread_cpu_seconds(server.pid))
                    loop_cpu = thr.get("event loop (main)", 0.0)
                    after = settled_file_count(server.base_url)
                if r.errors or warm.errors:
                    print(f"error: failed requests in mode {mode}: {r.raw}", file=sys.stderr)
                    return 1
                acked = r.requests * per_request
                on_server = after - before
                # wrk stops with some requests in flight: the server may hold up to one
                # request per connection more than wrk saw acknowledged, never fewer.
                if not acked <= on_server <= acked + args.connections * per_request:
                    print(f"error: server registered {on_server} files, client saw {acked}", file=sys.stderr)
                    return 1
                fps = acked / r.seconds
                results[mode].append(
                    {
                        "files_per_s": fps,
                        "req_per_s": r.rps,
                        "p50_ms": r.p50_ms,
                        "p99_ms": r.p99_ms,
                        "cpu_us_per_file": 1e6 * cpu / max(1, acked),
                        "server_cpu_pct": 100 * cpu / r.seconds,
                        "loop_us_per_file": 1e6 * loop_cpu / max(1, acked),
                        "threads_us_per_file": 1e6 * (cpu - loop_cpu) / max(1, acked),
                        "other_cpu_pct": 100 * max(0.0, r.machine_busy_s - cpu - r.client_cpu_s) / r.seconds,
                    }
                )
                print(
                    f"  round {rnd + 1} {mode:6s} {fps:10,.0f} files/s  ({r.rps:,.1f} req/s, p50 {r.p50_ms:.1f} ms, "
                    f"server CPU {100 * cpu / r.seconds:.0f}%, other CPU "
                    f"{results[mode][-1]['other_cpu_pct']:.0f}%)",
                    flush=True,
                )
    finally:
        finish_workdir(work, args.keep)

    def med(mode: str, k: str) -> float:
        return statistics.median(x[k] for x in results[mode])

    single, batch = med("single", "files_per_s"), med("batch", "files_per_s")
    ratio = batch / single
    print()
    print(
        f"files registered per second -- {machine_line()}, wrk 1 thread, {args.connections} connections, "
        f"{args.warmup:g}s warm-up + {args.seconds:g}s x {args.rounds} rounds (median)"
    )
    print_table(
        ["mode", "files/s", "req/s", "p50 ms", "p99 ms", "server CPU us/file", "server CPU %", "other CPU %"],
        [
            [
                label,
                med(m, "files_per_s"),
                med(m, "req_per_s"),
                med(m, "p50_ms"),
                med(m, "p99_ms"),
                med(m, "cpu_us_per_file"),
                med(m, "server_cpu_pct"),
                med(m, "other_cpu_pct"),
            ]
            for label, m in (("/put_file x1", "single"), (f"/put_files x{args.batch}", "batch"))
        ],
    )
    for label, m in (("/put_file", "single"), ("/put_files", "batch")):
        print(
            f"  {label}: server CPU per file -- event-loop thread {med(m, 'loop_us_per_file'):.1f} us, "
            f"other threads (SQLite, thread pool) {med(m, 'threads_us_per_file'):.1f} us"
        )
    ok = ratio >= GOAL
    print(f"ratio batch/single = {ratio:.1f}x (goal >= {GOAL:g}x) -> {'PASS' if ok else 'FAIL'}")
    print(
        json.dumps(
            {
                "benchmark": "put_files_batch",
                "batch": args.batch,
                "connections": args.connections,
                "seconds": args.seconds,
                "rounds": args.rounds,
                "single_files_per_s": round(single, 1),
                "batch_files_per_s": round(batch, 1),
                "single_cpu_us_per_file": round(med("single", "cpu_us_per_file"), 1),
                "batch_cpu_us_per_file": round(med("batch", "cpu_us_per_file"), 1),
                "ratio": round(ratio, 2),
                "goal": GOAL,
                "pass": ok,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
