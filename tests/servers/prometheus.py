"""Prometheus, to prove the chart's dashboards and alerts against real scraped data.

Debian's package (2.42) is fetched with ``apt-get download`` and unpacked into the cache with
``dpkg-deb -x``: nothing is installed on the machine, and the binary (plus ``promtool``) is
static. ``run()`` starts it with a scrape config for the given targets and rule files; a test
writes those, so this is a tool to run rather than a server the whole suite shares.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from .base import Process, ServerError, bin_dir, free_ports, progress

NAME = "prometheus"
VERSION = "2.42.0+ds-5+deb12u1"
PACKAGE = f"prometheus={VERSION}"


def binary() -> Path:
    return bin_dir(NAME, VERSION) / "prometheus"


def promtool() -> Path:
    return bin_dir(NAME, VERSION) / "promtool"


def _apt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["apt-get", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def install() -> Path:
    """Unpack Debian's prometheus package into the cache unless it is there; return the binary."""
    if binary().is_file() and promtool().is_file():
        return binary()
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise ServerError("cannot fetch Prometheus: apt-get and dpkg-deb are needed (a Debian or Ubuntu machine)")
    progress(f"fetching Debian's prometheus {VERSION} (about 20 MB)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        got = _apt("download", PACKAGE, cwd=work)
        if got.returncode != 0:  # a fresh machine has no package lists yet
            _apt("update", cwd=work)
            got = _apt("download", PACKAGE, cwd=work)
        debs = list(work.glob("prometheus_*.deb"))
        if got.returncode != 0 or not debs:
            raise ServerError(f"apt-get download {PACKAGE} failed: {got.stderr.strip()[-500:]}")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(work / "root")], check=True, timeout=120)
        target = bin_dir(NAME, VERSION)
        target.mkdir(parents=True, exist_ok=True)
        for tool in ("promtool", "prometheus"):  # the binary last: its presence means installed
            shutil.copy2(work / "root" / "usr" / "bin" / tool, target / f".{tool}.partial")
            (target / f".{tool}.partial").replace(target / tool)
    return binary()


@dataclass(frozen=True)
class Target:
    """One scrape target: a job name, host:port, and the bearer token /metrics wants (if any)."""

    job: str
    address: str
    bearer: str | None = None


def run(
    workdir: Path, targets: Iterable[Target], rule_files: Iterable[Path] = (), *, interval: str = "1s"
) -> tuple[Process, str]:
    """Start Prometheus scraping ``targets`` every ``interval``; return it and its URL once ready."""
    exe = install()
    port = free_ports(1)[0]
    jobs: list[dict[str, Any]] = []
    for t in targets:
        job: dict[str, Any] = {"job_name": t.job, "static_configs": [{"targets": [t.address]}]}
        if t.bearer:
            job["authorization"] = {"type": "Bearer", "credentials": t.bearer}
        jobs.append(job)
    config: Mapping[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": jobs,
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(dict(config)))
    argv = [
        str(exe), f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
    ]  # fmt: skip
    process = Process.spawn(NAME, argv, cwd=workdir, log_path=workdir / "prometheus.log")
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    process.wait_ready(ready, timeout=30)
    return process, url
