"""MinIO: a second, independent S3 implementation for the tests.

The MinIO repository is archived and publishes no binary we can reach, so it is built from the
Go module proxy. The proxy serves only one version of github.com/minio/minio: the final commit
of the archived repository (2026-02-12, 7aac2a2c5b7c); the RELEASE.2025-10-15 pseudo-version
is refused with 403. The binary reports its version as DEVELOPMENT.GOGET.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from .base import Process, Server, bin_dir, free_ports, go_build
from .s3 import S3Server, s3_ready

NAME = "minio"
VERSION = "2026-02-12"
MODULE = "github.com/minio/minio"
MODULE_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"


def binary() -> Path:
    return bin_dir(NAME, VERSION) / "minio"


def install() -> Path:
    """Build MinIO into the cache unless it is already there; return the binary."""
    return go_build(
        name=NAME,
        version=VERSION,
        module=MODULE,
        module_version=MODULE_VERSION,
        package=MODULE,
        binary="minio",
        tags=["kqueue"],
        minutes="2-10",
    )


def start(workdir: Path, *, log_path: Path | None = None, timeout: float = 60.0) -> Server:
    """Start a single-drive MinIO with its data in ``workdir``; return once S3 answers."""
    exe = install()
    port, console_port = free_ports(2)
    s3 = S3Server(f"http://127.0.0.1:{port}", "putplace", secrets.token_hex(16))
    argv = [
        str(exe),
        "server",
        str(workdir / "data"),
        "--address",
        f"127.0.0.1:{port}",
        "--console-address",
        f"127.0.0.1:{console_port}",
        "--certs-dir",
        str(workdir / "certs"),
        "--quiet",
    ]
    env = {
        "MINIO_ROOT_USER": s3.access_key,
        "MINIO_ROOT_PASSWORD": s3.secret_key,
        "MINIO_BROWSER": "off",
        "MINIO_UPDATE": "off",
        "HOME": str(workdir),  # MinIO creates ~/.minio whatever the flags say
    }
    process = Process.spawn(
        NAME,
        argv,
        cwd=workdir,
        log_path=log_path or workdir / "minio.log",
        env=env,
    )
    try:
        process.wait_ready(lambda: s3_ready(s3), timeout=timeout)
    except BaseException:
        process.stop()
        raise
    return Server(NAME, process, workdir, s3.env(NAME))
