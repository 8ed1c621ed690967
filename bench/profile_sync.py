"""Where the CPU of an initial sync goes, agent and API both: the sync of
``bench/agent_sync.py`` (a tree of small files, ``putplace-agent sync --once`` against a
fresh ``putplace-api``, 1 worker, SQLite + local storage, packs, fsync on) with py-spy
sampling each process, every thread that is on a CPU (not only the one holding the GIL).

Investigation aid only: py-spy is NOT a project dependency.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile_sync.py --out DIR [--files 100000] [--tree DIR] [--report-only]

Prints, per process, the CPU seconds (from /proc, with the sampler attached: sampling adds a
little), and the share of samples per stage, turned into microseconds of CPU per file. The
stages are found by the frames on each sampled stack (``STAGES`` below: the first rule that
matches a stack, leaf first, names its stage). The raw stacks (py-spy's collapsed format) are
kept in ``--out`` for a flame graph or another breakdown.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from _common import (
    ADMIN_KEY,
    VENV_BIN,
    children_cpu_seconds,
    cpu_seconds,
    machine_line,
    putplace_server,
    thread_cpu_delta,
    thread_cpu_seconds,
)
from agent_common import OtherLoad, agent_argv, agent_env, summary_of
from agent_sync import make_tree

# (stage, substrings of a frame): a frame is "function (file:line)" in py-spy's output. The
# stack is read from the leaf up; the first frame that matches any rule names the stage. So
# the most specific rules (what the leaf is doing) come first, and broad ones last.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("sha256", ("hashlib", "hash_file", "hash_pieces", "_hash_many", "hexdigest")),
    ("fsync / pack write", ("fsync", "put_pack", "packs.py", "storage/local.py", "storage/files.py")),
    ("index (agent SQLite)", ("index.py",)),
    ("catalogue (API SQLite)", ("store/sqlite.py",)),
    ("walk (scandir, lstat)", ("scanner.py",)),
    ("JSON encode/decode", ("json/", "jsonable_encoder", "dump_json", "validate_json", "Response.json")),
    ("pydantic validation / models", ("pydantic", "models.py")),
    ("multipart parse / build", ("formdata.py", "multipart", "_multipart")),
    ("auth / key check", ("auth.py", "deps.py")),
    ("batch logic (uploads.py)", ("uploads.py",)),
    ("routes (files/content)", ("routes/",)),
    ("FastAPI / Starlette routing", ("fastapi/", "starlette/")),
    ("HTTP server (uvicorn, h11, httptools)", ("uvicorn/", "h11/", "httptools", "http_protocol.py")),
    ("HTTP client (httpx, httpcore)", ("httpx/", "httpcore/")),
    ("agent pipeline (sync.py)", ("sync.py",)),
    ("client (putplace_client)", ("putplace_client/",)),
    ("metrics / logging / tracing", ("prometheus_client", "logging/", "metrics.py", "middleware.py", "structlog")),
    ("event loop / threads (asyncio, anyio)", ("asyncio/", "anyio/", "threading.py", "concurrent/", "selectors")),
]


# Leaves where a thread waits (py-spy sometimes samples a blocked thread as active): left out.
IDLE_LEAVES = ("_worker (concurrent/futures/thread.py:81)", "select (selectors.py:", "wait (threading.py:")


def stage_of(stack: list[str]) -> str:
    if not stack or any(leaf in stack[-1] for leaf in IDLE_LEAVES):
        return "idle (waiting; left out)"
    for frame in reversed(stack):
        for stage, needles in STAGES:
            if any(n in frame for n in needles):
                return stage
    return "other"


def read_raw(path: Path) -> tuple[Counter[str], Counter[str], int]:
    """py-spy's raw output: ``frame;frame;...;leaf count`` per line, the thread first (--threads).
    Returns samples per stage, per thread name, and in total."""
    stages: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text:
            continue
        count = int(count_text)
        frames = stack_text.split(";")
        threads[frames[0].split(" ", 1)[0]] += count
        stage = stages_key = stage_of(frames[1:])
        stages[stages_key] += count
        if not stage.startswith("idle"):
            total += count
    return stages, threads, total


def py_spy(rate: int, out: Path, *target: str) -> list[str]:
    return [str(VENV_BIN / "py-spy"), "record", "--threads", "--nonblocking", "-r", str(rate), "-f", "raw", "-o",
            str(out), *target]  # fmt: skip


def report(name: str, path: Path, cpu_s: float, files: int, threads_cpu: dict[str, float]) -> None:
    stages, _, total = read_raw(path)
    print(f"\n{name}: {cpu_s:.2f} s CPU = {1e6 * cpu_s / files:.0f} µs per file; {total:,} samples on a CPU")
    busiest = sorted(threads_cpu.items(), key=lambda kv: -kv[1])
    print("  CPU by thread (/proc): " + ", ".join(f"{t} {1e6 * c / files:.0f} µs" for t, c in busiest if c > 0))
    for stage, n in stages.most_common():
        if stage.startswith("idle"):
            print(f"  ({stage}: {n:,} samples)")
            continue
        share = n / total
        print(f"  {stage:42s} {100 * share:5.1f}%  {1e6 * cpu_s * share / files:6.1f} µs/file")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--tree", type=Path, default=None, help="an existing tree of agent_sync.py's shape (reused)")
    ap.add_argument("--out", type=Path, required=True, help="directory for the raw stacks and logs (kept)")
    ap.add_argument("--rate", type=int, default=250, help="samples per second per process")
    ap.add_argument("--agent-arg", action="append", default=["--upload-concurrency=8"], metavar="ARG")
    ap.add_argument("--report-only", action="store_true", help="print the report of the run kept in --out")
    args = ap.parse_args()
    if args.report_only:
        return show(args.out)
    if shutil.which("py-spy", path=str(VENV_BIN)) is None:
        sys.exit("error: py-spy is not installed (investigation only): .venv/bin/pip install py-spy")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    tree = args.tree or out / "tree"
    if args.tree is None:
        make_tree(tree, args.files)
    for stale in ("data", "state"):
        shutil.rmtree(out / stale, ignore_errors=True)
    with putplace_server(out / "data", out) as server:
        api_raw, agent_raw = out / "api.raw.txt", out / "agent.raw.txt"
        sampler = subprocess.Popen(py_spy(args.rate, api_raw, "--pid", str(server.pid)), stdout=subprocess.DEVNULL)
        time.sleep(1.0)  # attached before the first request
        argv = agent_argv(str(tree), server.base_url, str(out / "state"), "profile-node", "--once", *args.agent_arg)
        api_threads0 = thread_cpu_seconds(server.pid)
        api0, child0, others = cpu_seconds(server.pid), children_cpu_seconds(), OtherLoad()
        t0 = time.perf_counter()
        with open(out / "agent.log", "w") as log:
            agent = subprocess.Popen(argv, env=agent_env(ADMIN_KEY), stderr=log, stdout=subprocess.DEVNULL)
            # Attached by pid, so that the agent's CPU (of this process's children) is its own.
            agent_sampler = subprocess.Popen(py_spy(args.rate, agent_raw, "--pid", str(agent.pid)),
                                             stdout=subprocess.DEVNULL)  # fmt: skip
            agent_threads: dict[str, float] = {}
            while agent.poll() is None:  # per-thread CPU: the most seen (threads end before the agent)
                try:
                    now = thread_cpu_seconds(agent.pid)
                except OSError:
                    break
                agent_threads = {k: max(v, agent_threads.get(k, 0.0)) for k, v in now.items()}
                time.sleep(0.2)
            returncode = agent.wait()
        wall = time.perf_counter() - t0
        api_cpu, agent_cpu = cpu_seconds(server.pid) - api0, children_cpu_seconds() - child0
        other = others.cores(api_cpu + agent_cpu)
        api_threads = thread_cpu_delta(api_threads0, thread_cpu_seconds(server.pid))
        agent_sampler.wait(60)
        sampler.send_signal(signal.SIGINT)
        sampler.wait(60)
    stderr = (out / "agent.log").read_text()
    summary = summary_of(stderr)
    if returncode != 0 or not summary or summary["seen"] != args.files:
        print(stderr[-3000:], file=sys.stderr)
        return 1
    figures = {
        "files": args.files, "seconds": summary["seconds"], "wall": wall, "other_cores": other,
        "api_cpu": api_cpu, "agent_cpu": agent_cpu, "api_threads": api_threads, "agent_threads": agent_threads,
    }  # fmt: skip
    (out / "figures.json").write_text(json.dumps(figures))
    return show(out)


def show(out: Path) -> int:
    """The report of a run kept in ``out`` (also: ``--report-only``)."""
    f = json.loads((out / "figures.json").read_text())
    print(f"initial sync of {f['files']:,} files under py-spy: {f['seconds']:.1f} s (wall {f['wall']:.1f} s); "
          f"other programs {100 * f['other_cores']:.0f}% of a core -- {machine_line()}")  # fmt: skip
    report("API", out / "api.raw.txt", f["api_cpu"], f["files"], f["api_threads"])
    report("agent", out / "agent.raw.txt", f["agent_cpu"], f["files"], f["agent_threads"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
