"""Prometheus, to prove the chart's dashboards and alerts against real scraped data.

Debian's package (2.42) is fetched with ``apt-get download`` and unpacked into the cache with
``dpkg-deb -x``: nothing is installed on the machine, and the binary (plus ``promtool``) is
static. ``run()`` starts it with a scrape config for the given targets and rule files; a test
writes those, so this is a tool to run rather than a server the whole suite shares.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from .base import Process, bin_dir, free_ports, progress, unpack_debian_package

NAME = "prometheus"
VERSION = "2.42.0+ds-5+deb12u1"
PACKAGE = f"prometheus={VERSION}"


def binary() -> Path:
    return bin_dir(NAME, VERSION) / "prometheus"


def promtool() -> Path:
    return bin_dir(NAME, VERSION) / "promtool"


def install() -> Path:
    """Unpack Debian's prometheus package into the cache unless it is there; return the binary."""
    if binary().is_file() and promtool().is_file():
        return binary()
    progress(f"fetching Debian's prometheus {VERSION} (about 20 MB)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        unpack_debian_package(PACKAGE, root)
        target = bin_dir(NAME, VERSION)
        target.mkdir(parents=True, exist_ok=True)
        for tool in ("promtool", "prometheus"):  # the binary last: its presence means installed
            shutil.copy2(root / "usr" / "bin" / tool, target / f".{tool}.partial")
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
