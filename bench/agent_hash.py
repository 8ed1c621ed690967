"""Hash throughput of the node agent against plain ``hashlib.sha256`` in one thread.

Several large files (default 16 x 128 MiB = 2 GiB) are written to a temp dir on disk and read
once before anything is timed, so every contender reads from the page cache. Then, per round
(rounds alternate the contenders; the median round counts):

* **baseline** -- one thread of this process: for each file, ``open`` + ``readinto`` of a
  1 MiB buffer + ``hashlib.sha256().update`` (what ``hashlib.file_digest`` does).
* **agent pipeline** -- what ``putplace-agent`` does with files a scan found: a real
  ``Agent`` (default settings: ``hash_workers=2``) gets the paths through ``_queue_hash``; its
  ``hash_workers`` hasher tasks hand the batches to its thread pool (``_hash_many`` ->
  ``hasher.hash_file``: open, fstat, readv, sha256, fstat again) and record the entries in the
  local SQLite index. The time runs from the first path queued to the last entry handed to the
  announce queue. No server is involved: the announcers are not started.
* **agent pipeline, hash_workers=1** (reference) -- the same with one worker: the agent's
  per-byte overhead against the baseline, core for core.
* **hash_file x N threads** (reference) -- ``hasher.hash_file`` over the same paths through a
  plain ``ThreadPoolExecutor(N)``: the hasher without the agent's queues and index.
* **hash_file x 1 thread** (reference) -- the per-byte cost of ``hash_file`` itself.
* **sha256 of bytes in memory** (reference) -- ``hashlib`` alone on a 64 MiB buffer, no reads.

    .venv/bin/python bench/agent_hash.py [--size-mib 2048] [--files 16] [--rounds 3] [--dir PARENT]

Goal: agent pipeline MiB/s / baseline MiB/s >= 0.8.

Unlike the server benchmarks this one imports the agent: what it measures is the agent's
in-process hashing path, not a protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import finish_workdir, machine_line, print_table, temp_workdir
from agent_common import OtherLoad, code_version, wait_quiet

GOAL = 0.8
MIB = 1024 * 1024


def make_files(directory: Path, total_mib: int, count: int) -> list[bytes]:
    """``count`` files of ``total_mib / count`` MiB each, distinct content (a random block
    repeated, each file with its own first bytes)."""
    block = os.urandom(64 * MIB)
    size = total_mib * MIB // count
    paths = []
    for i in range(count):
        path = directory / f"big-{i:03d}.bin"
        with open(path, "wb") as f:
            f.write(f"file {i} {os.urandom(8).hex()}\n".encode())
            left = size - f.tell()
            while left > 0:
                n = min(left, len(block))
                f.write(memoryview(block)[:n])
                left -= n
        paths.append(os.fsencode(path))
    return paths


def baseline(paths: list[bytes]) -> dict[bytes, str]:
    """Plain hashlib, one thread: read each file in 1 MiB blocks and hash them."""
    out = {}
    buf = bytearray(MIB)
    view = memoryview(buf)
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                digest.update(view[:n])
        out[path] = digest.hexdigest()
    return out


def in_memory(total_bytes: int) -> float:
    """Seconds to sha256 ``total_bytes`` from a buffer already in memory (no reads)."""
    block = os.urandom(64 * MIB)
    view = memoryview(block)
    digest = hashlib.sha256()
    t0 = time.perf_counter()
    done = 0
    while done < total_bytes:
        n = min(total_bytes - done, MIB)
        offset = done % len(block)
        digest.update(view[offset : offset + n])
        done += n
    return time.perf_counter() - t0


def hash_file_pool(paths: list[bytes], threads: int) -> dict[bytes, str]:
    from putplace_agent.hasher import hash_file

    if threads == 1:
        return {p: hash_file(p).sha256 for p in paths}
    with ThreadPoolExecutor(threads, thread_name_prefix="bench-hash") as pool:
        return {e.path: e.sha256 for e in pool.map(hash_file, paths)}


def agent_pipeline(
    paths: list[bytes], state_dir: Path, hash_workers: int | None = None
) -> tuple[float, dict[bytes, str], int]:
    """The agent's own hashing path; returns (seconds, hashes, hash_workers)."""
    from putplace_agent.index import Index
    from putplace_agent.settings import AgentSettings
    from putplace_agent.sync import Agent
    from putplace_client import PutPlaceClient

    for name in ("_queue_hash", "_hasher", "_hash_batch", "_hash_many"):
        if not hasattr(Agent, name):
            sys.exit(f"error: putplace_agent.sync.Agent has no {name}: this benchmark needs updating")

    async def run() -> tuple[float, dict[bytes, str], int]:
        shutil.rmtree(state_dir, ignore_errors=True)
        settings = AgentSettings(
            paths=[Path(os.fsdecode(paths[0])).parent],
            state_dir=state_dir,
            api_key="unused",
            node_name="bench",
            ip_address="127.0.0.1",
            **({} if hash_workers is None else {"hash_workers": hash_workers}),
        )
        index = Index(state_dir, settings.identity)
        client = PutPlaceClient("http://127.0.0.1:9", "unused")  # never called: no announcers run
        agent = Agent(settings, client, index)
        workers = [asyncio.create_task(agent._hasher()) for _ in range(settings.hash_workers)]
        sizes = [os.stat(p).st_size for p in paths]
        out: dict[bytes, str] = {}
        try:
            t0 = time.perf_counter()
            await agent._queue_hash(list(paths), sizes)
            for _ in paths:
                entry = await agent._announce_q.get()
                out[entry.path] = entry.sha256
            seconds = time.perf_counter() - t0
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            agent._pool.shutdown(wait=True)
            await client.aclose()
            index.close()
        if agent.tally.failed:
            raise RuntimeError(f"the agent reported failures: {agent.tally.as_dict()}")
        return seconds, out, settings.hash_workers

    return asyncio.run(run())


def timed(fn, *args):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - t0, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=2048, help="total size of the files")
    ap.add_argument("--files", type=int, default=16, help="number of files (all the same size)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; contenders alternate; the median counts")
    ap.add_argument("--dir", type=Path, default=None, help="parent of the temp dir (default: the system temp dir)")
    ap.add_argument("--wait-quiet", type=float, default=300, help="wait up to this long for other load to stop")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()

    parent = args.dir or Path(tempfile.gettempdir())
    need = args.size_mib * MIB * 1.1
    free = shutil.disk_usage(parent).free
    if free < need:
        sys.exit(f"error: {parent} has {free / MIB:,.0f} MiB free, the files need {need / MIB:,.0f} MiB (--dir)")
    work = temp_workdir("agent-hash", parent)
    total = 0
    results: dict[str, list[float]] = {}
    workers = 2
    try:
        t0 = time.perf_counter()
        (work / "files").mkdir()
        paths = make_files(work / "files", args.size_mib, args.files)
        total = sum(os.stat(p).st_size for p in paths)
        print(f"wrote {len(paths)} files, {total / MIB:,.0f} MiB, in {time.perf_counter() - t0:.1f} s", flush=True)
        # Warm the page cache (and check every contender computes the same hashes).
        warm_s, expected = timed(baseline, paths)
        print(f"warm-up read + hash: {total / MIB / warm_s:,.0f} MiB/s", flush=True)

        def record(name: str, seconds: float) -> None:
            results.setdefault(name, []).append(total / MIB / seconds)

        wait_quiet(args.wait_quiet)
        own0, others = time.process_time(), OtherLoad()
        for rnd in range(args.rounds):
            s, got = timed(baseline, paths)
            assert got == expected
            record("baseline", s)
            s, got, workers = agent_pipeline(paths, work / "state")
            if got != expected:
                raise RuntimeError("the agent's hashes differ from hashlib's")
            record("agent", s)
            s, got, _ = agent_pipeline(paths, work / "state", 1)
            assert got == expected
            record("agent1", s)
            s, got = timed(hash_file_pool, paths, workers)
            assert got == expected
            record("pool", s)
            s, got = timed(hash_file_pool, paths, 1)
            assert got == expected
            record("one", s)
            record("memory", in_memory(total))
            print(
                f"  round {rnd + 1}: baseline {results['baseline'][-1]:,.0f} MiB/s, "
                f"agent {results['agent'][-1]:,.0f} MiB/s, hash_file x{workers} {results['pool'][-1]:,.0f}, "
                f"hash_file x1 {results['one'][-1]:,.0f}, in memory {results['memory'][-1]:,.0f}",
                flush=True,
            )
        other_cores = others.cores(time.process_time() - own0)
    finally:
        finish_workdir(work, args.keep)

    med = {k: statistics.median(v) for k, v in results.items()}
    base = med["baseline"]
    ratio = med["agent"] / base
    print()
    print(
        f"sha256 throughput -- {machine_line()}, {args.files} files, {total / MIB:,.0f} MiB in page cache, "
        f"{args.rounds} rounds (median)"
    )
    print_table(
        ["contender", "MiB/s", "vs baseline", "min MiB/s", "max MiB/s"],
        [
            [label, med[k], med[k] / base, min(results[k]), max(results[k])]
            for label, k in (
                ("baseline: hashlib, 1 thread, read + hash", "baseline"),
                (f"agent pipeline (hash_workers={workers})", "agent"),
                ("agent pipeline, hash_workers=1", "agent1"),
                (f"hash_file, ThreadPoolExecutor({workers})", "pool"),
                ("hash_file, 1 thread", "one"),
                ("hashlib on bytes in memory (no reads)", "memory"),
            )
        ],
    )
    print(f"other programs used {100 * other_cores:.0f}% of a core meanwhile; code: {code_version()}")
    ok = ratio >= GOAL
    print(f"ratio agent/baseline = {ratio:.2f} (goal >= {GOAL:g}) -> {'PASS' if ok else 'FAIL'}")
    print(
        json.dumps(
            {
                "benchmark": "agent_hash",
                "files": args.files,
                "mib": round(total / MIB),
                "rounds": args.rounds,
                "hash_workers": workers,
                "baseline_mib_s": round(base, 1),
                "agent_mib_s": round(med["agent"], 1),
                "agent_1_worker_mib_s": round(med["agent1"], 1),
                "hash_file_pool_mib_s": round(med["pool"], 1),
                "hash_file_one_mib_s": round(med["one"], 1),
                "in_memory_mib_s": round(med["memory"], 1),
                "ratio": round(ratio, 3),
                "other_cpu_pct": round(100 * other_cores, 1),
                "code": code_version(),
                "goal": GOAL,
                "pass": ok,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
