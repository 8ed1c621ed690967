"""PutPlace beside restic, the backup tool a user would otherwise run, on the very same trees
in the same run.

restic (``tests.servers.restic``: built from the Go module proxy into the cache on first use)
backs up to a local repository in the bench's temp dir, on the same filesystem as PutPlace's
API data dir. PutPlace is ``putplace-agent sync --once`` against a ``putplace-api`` (1 worker,
SQLite + local storage, default settings: fsync on), as in ``agent_sync.py``.

(a) **First backup** of ``--files`` (default 100,000) small files, 1-10 KiB, all distinct (the
    tree of ``agent_sync.py``): a fresh restic repository and cache vs a fresh API data dir and
    agent state dir.
(b) **No-change second backup**: the same command again (``--rescan-runs`` times, median), the
    repository/cache and the state dir kept: nothing changed.
(c) **One 2 GiB file** (``--size-mib``), all random bytes, in a directory of its own: first backup
    of it, fresh repository vs fresh API data dir. (upload_large.py's file repeats a 64 MiB block,
    which restic's content-defined chunking would store once: not the same work.)

Each contender runs as the command a user runs, timed from spawn to exit (wall); the tools'
own figure (restic's ``total_duration``, the agent's ``seconds``) is reported too. CPU: the
child's (restic; the agent) plus the API process's, and the other programs' CPU meanwhile.
Rounds alternate which tool goes first; the median round counts.
``ratio = restic wall / PutPlace wall`` (a throughput ratio), goal **>= 1.0** on each of (a), (b),
(c), while PutPlace does more: a server, a catalogue, per-file metadata.

The tree and the file stay in the page cache (written once, walked before the first run): no
contender reads the disk. The repository password is random per run and passed to restic in its
environment only (``RESTIC_PASSWORD``), never printed.

    .venv/bin/python bench/vs_restic.py [--files 100000] [--size-mib 2048] [--rounds 2] [--rescan-runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import REPO, children_cpu_seconds, finish_workdir, machine_line, print_table, putplace_server, temp_workdir
from agent_common import OtherLoad, add_common_args, code_version, wait_quiet
from agent_sync import make_tree, run_agent, scandir_walk, stats_files

sys.path.insert(0, str(REPO))
from tests.servers import restic as restic_tool  # noqa: E402  (the repository's test-server installer)

GOAL_RATIO = 1.0
HOST = "bench-node"


class Restic:
    """One restic repository (and its cache) in ``root``."""

    def __init__(self, binary: Path, root: Path) -> None:
        self.binary = binary
        self.repo = root / "restic-repo"
        self.cache = root / "restic-cache"
        # Random per run, in restic's environment only: never on a command line or in a log.
        self.env = {**os.environ, "RESTIC_PASSWORD": secrets.token_urlsafe(24), "RESTIC_PROGRESS_FPS": "0.1"}

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(self.binary), "--repo", str(self.repo), "--cache-dir", str(self.cache), *args]
        p = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=3600)
        if p.returncode != 0:
            tail = "\n".join(p.stderr.splitlines()[-10:])
            raise RuntimeError(f"restic {args[0]} exited with {p.returncode}:\n{tail}")
        return p

    def init(self) -> None:
        self._run("init")

    def backup(self, path: Path) -> dict[str, Any]:
        """``restic backup --json PATH``: its summary message plus wall-clock and CPU figures."""
        child0, others = children_cpu_seconds(), OtherLoad()
        t0 = time.perf_counter()
        p = self._run("backup", "--json", "--host", HOST, str(path))
        wall = time.perf_counter() - t0
        summary: dict[str, Any] = {}
        for line in p.stdout.splitlines():
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and message.get("message_type") == "summary":
                summary = message
        if not summary:
            raise RuntimeError(f"restic backup printed no summary:\n{p.stdout[-2000:]}")
        summary["wall_s"] = wall
        summary["cpu_s"] = children_cpu_seconds() - child0
        summary["other_cores"] = others.cores(summary["cpu_s"])
        return summary

    def remove(self) -> None:
        shutil.rmtree(self.repo, ignore_errors=True)
        shutil.rmtree(self.cache, ignore_errors=True)


def make_big_file(path: Path, size_mib: int) -> None:
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(2**20))


def restic_runs(binary: Path, work: Path, tree: Path, files: int, rescans: int, wait_s: float) -> list[dict[str, Any]]:
    """restic's first backup of ``tree`` into a fresh repository, then ``rescans`` no-change ones."""
    restic = Restic(binary, work)
    restic.init()
    try:
        wait_quiet(wait_s)
        first = restic.backup(tree)
        if first["total_files_processed"] != files or first["files_new"] != files:
            raise RuntimeError(f"restic's first backup: {first}")
        runs = [first]
        for _ in range(rescans):
            again = restic.backup(tree)
            if again["files_unmodified"] != files or again["data_blobs"]:
                raise RuntimeError(f"restic's no-change backup: {again}")
            runs.append(again)
        return runs
    finally:
        restic.remove()


def putplace_runs(
    work: Path, tree: Path, files: int, rescans: int, wait_s: float, agent_args: list[str]
) -> list[dict[str, Any]]:
    """The agent's initial sync of ``tree`` against a fresh API, then ``rescans`` no-change ones."""
    state, data, log = work / "agent-state", work / "api-data", work / "agent.log"
    try:
        wait_quiet(wait_s)
        with putplace_server(data, work) as server:
            first = run_agent(tree, server.base_url, state, log, server.pid, agent_args)
            on_server = stats_files(server.base_url)
            if first["seen"] != files or first["failed"] or on_server != files:
                raise RuntimeError(f"agent's initial sync: {first}, server has {on_server} files")
            runs = [first]
            for _ in range(rescans):
                again = run_agent(tree, server.base_url, state, log, server.pid, agent_args)
                if again["seen"] != files or again["hashed"] or again["failed"] or again["unchanged"] != files:
                    raise RuntimeError(f"agent's no-change rescan: {again}")
                runs.append(again)
        return runs
    finally:
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)


def alternate(rounds: int, first: Callable[[], None], second: Callable[[], None]) -> None:
    """Run both ``rounds`` times, the order swapped every round: load that comes and goes hits both."""
    for k in range(rounds):
        for step in (first, second) if k % 2 == 0 else (second, first):
            step()


def describe(tool: str, what: str, r: dict[str, Any]) -> None:
    if tool == "restic":
        cpu = f"restic CPU {r['cpu_s']:.1f} s"
        own = r["total_duration"]
    else:
        cpu = f"agent CPU {r['agent_cpu_s']:.1f} s, API CPU {r['api_cpu_s']:.1f} s"
        own = r["seconds"]
    print(
        f"  {tool:7} {what}: wall {r['wall_s']:.2f} s (own figure {own:.2f} s), {cpu}, "
        f"other programs {100 * r['other_cores']:.0f}% of a core",
        flush=True,
    )


def row(label: str, units: float, runs: list[dict[str, Any]], tool: str) -> tuple[list[object], float, float]:
    """A table row of the runs' medians, the median wall time and the median CPU (all processes)."""

    def median(key: str) -> float:
        return float(statistics.median(float(r[key]) for r in runs))

    wall = median("wall_s")
    if tool == "restic":
        own, cpu, api = median("total_duration"), median("cpu_s"), ""
        total_cpu = cpu
    else:
        own, cpu, api = median("seconds"), median("agent_cpu_s"), f"{median('api_cpu_s'):.1f}"
        total_cpu = float(statistics.median(float(r["agent_cpu_s"]) + float(r["api_cpu_s"]) for r in runs))
    walls = ", ".join(f"{r['wall_s']:.2f}" for r in runs)
    return [label, wall, units / wall, own, cpu, api, round(100 * median("other_cores")), walls], wall, total_cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000, help="files in the small-file tree")
    ap.add_argument("--size-mib", type=int, default=2048, help="size of the one big file (0: skip (c))")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each comparison (order alternates)")
    ap.add_argument("--rescan-runs", type=int, default=3, help="no-change runs after each first backup")
    add_common_args(ap, "--upload-concurrency=8")
    args = ap.parse_args()

    try:
        return compare(args)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def compare(args: argparse.Namespace) -> int:
    binary = restic_tool.install()
    restic_version = subprocess.run([str(binary), "version"], capture_output=True, text=True, check=True).stdout
    version = code_version()
    work = temp_workdir("vs-restic")
    small, big = work / "tree", work / "big"
    got: dict[str, dict[str, list[dict[str, Any]]]] = {
        "small": {"restic": [], "putplace": []},
        "big": {"restic": [], "putplace": []},
    }
    try:
        t0 = time.perf_counter()
        total_bytes = make_tree(small, args.files)
        scandir_walk(str(small))  # dentries and inodes warm for everyone
        print(f"wrote {args.files:,} files ({total_bytes / 2**20:,.0f} MiB) in {time.perf_counter() - t0:.1f} s")

        def small_restic() -> None:
            runs = restic_runs(binary, work, small, args.files, args.rescan_runs, args.wait_quiet)
            got["small"]["restic"] += runs
            describe("restic", "first backup", runs[0])
            for r in runs[1:]:
                describe("restic", "no change", r)

        def small_putplace() -> None:
            runs = putplace_runs(work, small, args.files, args.rescan_runs, args.wait_quiet, args.agent_arg)
            got["small"]["putplace"] += runs
            describe("agent", "initial sync", runs[0])
            for r in runs[1:]:
                describe("agent", "no change", r)

        alternate(args.rounds, small_putplace, small_restic)

        if args.size_mib:
            t0 = time.perf_counter()
            make_big_file(big / "big.bin", args.size_mib)
            print(f"wrote {args.size_mib:,} MiB of random bytes in {time.perf_counter() - t0:.1f} s")

            def big_restic() -> None:
                [r] = restic_runs(binary, work, big, 1, 0, args.wait_quiet)
                got["big"]["restic"].append(r)
                describe("restic", f"{args.size_mib} MiB file", r)

            def big_putplace() -> None:
                [r] = putplace_runs(work, big, 1, 0, args.wait_quiet, args.agent_arg)
                got["big"]["putplace"].append(r)
                describe("agent", f"{args.size_mib} MiB file", r)

            alternate(args.rounds, big_putplace, big_restic)
    finally:
        finish_workdir(work, args.keep)

    n = args.rescan_runs + 1
    first_of = {tool: [r for i, r in enumerate(runs) if i % n == 0] for tool, runs in got["small"].items()}
    again_of = {tool: [r for i, r in enumerate(runs) if i % n] for tool, runs in got["small"].items()}
    comparisons = [
        ("(a) first backup", args.files, "files/s", first_of),
        ("(b) no change", args.files, "files/s", again_of),
    ]
    if args.size_mib:
        comparisons.append((f"(c) {args.size_mib:,} MiB file", args.size_mib, "MiB/s", got["big"]))
    rows: list[list[object]] = []
    ratios: dict[str, float] = {}
    cpu_ratios: dict[str, float] = {}
    for label, units, unit, runs_of in comparisons:
        pp_row, pp_wall, pp_cpu = row(f"{label}: PutPlace ({unit})", units, runs_of["putplace"], "putplace")
        r_row, r_wall, r_cpu = row(f"{label}: restic ({unit})", units, runs_of["restic"], "restic")
        rows += [pp_row, r_row]
        ratios[label] = r_wall / pp_wall
        cpu_ratios[label] = r_cpu / max(pp_cpu, 1e-9)

    print()
    print(f"PutPlace vs restic ({restic_version.strip()}) -- {machine_line()}")
    print(f"code: {version}; {args.files:,} small files, rounds {args.rounds}, {args.rescan_runs} no-change runs each")
    print_table(
        ["contender", "wall s", "per s (wall)", "own s", "agent/restic CPU s", "API CPU s", "others %", "wall s, all"],
        rows,
    )
    for label, ratio in ratios.items():
        verdict = "PASS" if ratio >= GOAL_RATIO else "FAIL"
        print(
            f"{label}: PutPlace / restic throughput = {ratio:.2f} (goal >= {GOAL_RATIO:g}) -> {verdict}; "
            f"CPU cost restic / PutPlace (agent + API) = {cpu_ratios[label]:.2f}"
        )
    print(
        json.dumps(
            {
                "benchmark": "vs_restic",
                "restic": restic_tool.VERSION,
                "files": args.files,
                "size_mib": args.size_mib,
                "rounds": args.rounds,
                "ratios": {label: round(ratio, 3) for label, ratio in ratios.items()},
                "cpu_ratios": {label: round(ratio, 3) for label, ratio in cpu_ratios.items()},
                "walls": {
                    label: {tool: [round(float(r["wall_s"]), 3) for r in runs] for tool, runs in runs_of.items()}
                    for label, _, _, runs_of in comparisons
                },
                "other_cpu_pct": round(
                    100 * statistics.median(float(r["other_cores"]) for r in got["small"]["putplace"]), 1
                ),
                "code": version,
                "pass": {label: ratio >= GOAL_RATIO for label, ratio in ratios.items()},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
