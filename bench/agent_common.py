"""Helpers shared by the agent benchmarks (``agent_hash``, ``agent_sync``, ``agent_latency``):
which code was measured, whether the machine was quiet, and the agent's outputs (its summary
line and its Prometheus metrics).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request

from _common import REPO, machine_busy_seconds

sys.path.insert(0, str(REPO))
from tests.processes import summary_of as summary_of  # noqa: E402  (re-exported for the agent benchmarks)


def code_version() -> str:
    """The commit measured, and whether the agent/API/client sources differ from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "agent", "api"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (f" + uncommitted changes in {len(dirty)} file(s) under agent/ api/" if dirty else "")


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores the whole machine kept busy over the next ``seconds``."""
    b0 = machine_busy_seconds()
    time.sleep(seconds)
    return (machine_busy_seconds() - b0) / seconds


def wait_quiet(max_wait_s: float, threshold_cores: float = 0.15) -> float:
    """Wait (up to ``max_wait_s``) until other programs use less than ``threshold_cores``:
    on 2 cores, someone else's test run halves any figure. Returns the last reading."""
    deadline = time.monotonic() + max_wait_s
    load = busy_cores()
    said = False
    while load > threshold_cores and time.monotonic() < deadline:
        if not said:
            print(f"machine busy ({load:.2f} cores used by others); waiting up to {max_wait_s:.0f} s", flush=True)
            said = True
        load = busy_cores(2.0)
    if load > threshold_cores:
        print(f"warning: still {load:.2f} cores busy with other work: figures will be low and noisy", flush=True)
    return load


class OtherLoad:
    """CPU used by processes other than the ones measured, over an interval."""

    def __init__(self) -> None:
        self.busy0 = machine_busy_seconds()
        self.t0 = time.monotonic()

    def cores(self, measured_cpu_s: float) -> float:
        """Average cores used by others since creation, given the measured processes' CPU seconds."""
        elapsed = max(1e-9, time.monotonic() - self.t0)
        return max(0.0, (machine_busy_seconds() - self.busy0 - measured_cpu_s) / elapsed)


def add_common_args(ap: argparse.ArgumentParser, agent_example: str) -> None:
    """The flags every agent benchmark takes."""
    ap.add_argument(
        "--agent-arg", action="append", default=[], metavar="ARG",
        help=f"extra agent flag, e.g. --agent-arg={agent_example} (repeatable)",
    )  # fmt: skip
    ap.add_argument("--wait-quiet", type=float, default=300, help="wait up to this long for other load to stop")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (tree, logs, databases)")


def agent_argv(tree: str, server_url: str, state_dir: str, node: str, *more: str) -> list[str]:
    return [
        sys.executable, "-m", "putplace_agent", "sync", tree, "--server", server_url, "--state-dir", state_dir,
        "--node-name", node, "--log-format", "json", *more,
    ]  # fmt: skip


def agent_env(key: str) -> dict[str, str]:
    return {**os.environ, "PUTPLACE_API_KEY": key}


# -- Prometheus text exposition ----------------------------------------------------------------


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def gauge(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def labelled(text: str, name: str, label: str) -> dict[str, float]:
    """Every sample of ``name`` by the value of ``label``."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") and f'{label}="' in line:
            value = line.split(f'{label}="', 1)[1].split('"', 1)[0]
            out[value] = float(line.rsplit(" ", 1)[1])
    return out


def histogram(text: str, name: str) -> tuple[list[tuple[float, float]], float, float]:
    """Cumulative buckets [(le, count)], count and sum of a Prometheus histogram."""
    buckets: list[tuple[float, float]] = []
    count = total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
        elif line.startswith(name + "_count "):
            count = float(line.rsplit(" ", 1)[1])
        elif line.startswith(name + "_sum "):
            total = float(line.rsplit(" ", 1)[1])
    return sorted(buckets), count, total


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding rank q."""
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-12)
        prev_le, prev_count = le, count
    return buckets[-1][0]
