"""A large file through an upload session (chunks, 4 in parallel) against the same file in one
streamed request (``POST /upload_file``), in the same run; plus the API's peak resident memory.

* The source file is made once by repeating a 64 MiB random block (incompressible enough).
* Per round and per mode, a fresh putplace-api (1 worker, SQLite + local storage, fsync on, the
  defaults) with a fresh data dir; the file is announced with /put_file, then sent by the
  project's client (``PutPlaceClient.upload`` or ``create_upload_session`` + ``upload_chunked``),
  which reads the file 1 MiB at a time in both modes. Time = announce to the server's 200 (for a
  session: the whole content hashed again, fsynced and renamed into place).
* Rounds alternate which mode goes first; ``sync`` between steps so none pays for the previous
  one's dirty pages. Other processes' CPU during each step is reported (the machine is shared).

    .venv/bin/python bench/upload_sessions.py [--size-mib 1024] [--rounds 3]

Goals: chunked throughput / single-request throughput >= 0.5 (a session pays one extra read of
the content to hash it at completion, and an fsync per chunk), and API peak RSS < 150 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from _common import (
    ADMIN_KEY,
    cpu_seconds,
    machine_busy_seconds,
    machine_line,
    peak_rss_mib,
    print_table,
    putplace_server,
    temp_workdir,
)

from putplace_client import FileMetadata, PutPlaceClient

GOAL_RATIO = 0.5
GOAL_RSS_MB = 150
BLOCK = 64 * 1024 * 1024


def make_source(path: Path, size: int) -> str:
    block = os.urandom(BLOCK)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            piece = block[: min(left, BLOCK)]
            f.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


async def send(url: str, src: Path, sha: str, size: int, chunked: bool) -> None:
    meta = FileMetadata(
        filepath=str(src), hostname="bench", ip_address="127.0.0.1", sha256=sha, file_size=size, file_mode=0o100644,
        file_uid=0, file_gid=0, file_mtime=0.0, file_atime=0.0, file_ctime=0.0,
    )  # fmt: skip
    async with PutPlaceClient(url, ADMIN_KEY, timeout=600) as client:
        assert (await client.put_file(meta)).upload_required
        if chunked:
            session = await client.create_upload_session(sha, size)
            await client.upload_chunked(session, src, parallel=4)
        else:
            await client.upload(sha, src)


def one_upload(work: Path, src: Path, sha: str, size: int, chunked: bool) -> dict[str, float]:
    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    subprocess.run(["sync"], check=True)
    with putplace_server(data, work) as server:
        busy, server_cpu, own = machine_busy_seconds(), cpu_seconds(server.pid), time.process_time()
        started = time.perf_counter()
        asyncio.run(send(server.base_url, src, sha, size, chunked))
        seconds = time.perf_counter() - started
        server_cpu = cpu_seconds(server.pid) - server_cpu
        own = time.process_time() - own
        other = machine_busy_seconds() - busy - server_cpu - own
        rss = peak_rss_mib(server.pid)
    shutil.rmtree(data, ignore_errors=True)
    return {
        "seconds": seconds,
        "mib_s": size / 2**20 / seconds,
        "rss_mib": rss,
        "other_cpu_pct": 100 * other / seconds,
        "server_cpu_s": server_cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the source file and data dirs go")
    args = parser.parse_args()
    work = temp_workdir("sessions") if args.dir is None else Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    size = args.size_mib * 2**20
    try:
        src = work / "source.bin"
        sha = make_source(src, size)
        rows, results = [], {"single": [], "chunked": []}  # type: ignore[var-annotated]
        for n in range(args.rounds):
            order = [False, True] if n % 2 == 0 else [True, False]
            for chunked in order:
                r = one_upload(work, src, sha, size, chunked)
                mode = "chunked" if chunked else "single"
                results[mode].append(r)
                row = [r["seconds"], r["mib_s"], r["server_cpu_s"], r["rss_mib"], r["other_cpu_pct"]]
                rows.append([n + 1, mode, *row])
        print(machine_line())
        print_table(["round", "mode", "seconds", "MiB/s", "API CPU s", "API peak RSS MiB", "other CPU %"], rows)
        ratios = [c["mib_s"] / s["mib_s"] for c, s in zip(results["chunked"], results["single"], strict=True)]
        ratio = statistics.median(ratios)
        rss = max(r["rss_mib"] for r in results["chunked"]) * 2**20 / 1e6
        print(f"chunked / single, per round: {', '.join(f'{x:.2f}' for x in ratios)}; median {ratio:.2f}")
        print(f"goal ratio >= {GOAL_RATIO}: {'met' if ratio >= GOAL_RATIO else 'missed'}; ", end="")
        print(f"API peak RSS {rss:.0f} MB, goal < {GOAL_RSS_MB} MB: {'met' if rss < GOAL_RSS_MB else 'missed'}")
        summary = {
            "size_mib": args.size_mib,
            "ratio_median": ratio,
            "ratios": ratios,
            "chunked_mib_s": statistics.median(r["mib_s"] for r in results["chunked"]),
            "single_mib_s": statistics.median(r["mib_s"] for r in results["single"]),
            "api_peak_rss_mb": rss,
            "api_cpu_s": {mode: [r["server_cpu_s"] for r in runs] for mode, runs in results.items()},
            "other_cpu_pct": [r[6] for r in rows],
        }
        print(json.dumps(summary))
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
