"""Real servers for the tests, on 127.0.0.1: FerretDB (MongoDB wire), SeaweedFS and MinIO (S3),
a Kubernetes control plane with kwok fake nodes (kube), and a Docker engine (docker) with the
project's images built on it (images); and the real command-line tools the tests drive (helm, skaffold, and
Prometheus, which tests start with their own config), installed and cached the same way; and
restic, which only bench/vs_restic.py runs (installed when named or by that benchmark).

One mechanism, three entry points:

- the pytest plugin ``tests.servers.fixtures`` (fixtures ``mongodb_url``, ``seaweedfs``,
  ``minio``, ``kube``, ``docker``, ``python_base_image``, ``putplace_images``), registered for
  the whole suite by ``tests/conftest.py``;
- the command line ``python -m tests.servers install|start|stop|env [NAME...]``;
- this API: ``SERVERS[name].install()`` and ``SERVERS[name].start(workdir)``.

Binaries are cached outside the repository (see ``cache_dir()``); docs/test-servers.md has the
details, versions and measurements.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Protocol, cast

from . import (
    chromium,
    docker,
    ferretdb,
    helm,
    images,
    kind,
    kube,
    minio,
    postgres,
    prometheus,
    restic,
    seaweedfs,
    skaffold,
)
from .base import Server, ServerError, cache_dir
from .docker import DockerEngine
from .kube import KubeCluster
from .s3 import S3Server


class ToolModule(Protocol):
    NAME: str
    VERSION: str

    def binary(self) -> Path: ...

    def install(self) -> Path: ...


class ServerModule(ToolModule, Protocol):
    def start(self, workdir: Path, *, log_path: Path | None = None, timeout: float = ...) -> Server: ...


def _spec(module: ModuleType) -> ServerModule:
    return cast(ServerModule, module)


SERVERS: dict[str, ServerModule] = {
    "ferretdb": _spec(ferretdb),
    "seaweedfs": _spec(seaweedfs),
    "minio": _spec(minio),
    "kube": _spec(kube),
    "docker": _spec(docker),
}


TOOLS: dict[str, ToolModule] = {
    "helm": cast(ToolModule, helm),
    "prometheus": cast(ToolModule, prometheus),
    "postgres": cast(ToolModule, postgres),  # what FerretDB runs on for the soak benchmark
    "images": cast(ToolModule, images),  # base + project images, built on the engine (after docker)
    "kind": cast(ToolModule, kind),  # the kind CLI and node image (after kube and images)
    "skaffold": cast(ToolModule, skaffold),  # what the e2e suite runs skaffold.yaml with
    "chromium": cast(ToolModule, chromium),  # the browser the console tests drive (tests/console)
}
# Installed only when named (``install restic``) or by the benchmark that runs them: no test
# needs them, so a bare ``install`` (CI's) leaves them out.
ON_DEMAND: dict[str, ToolModule] = {
    "restic": cast(ToolModule, restic),  # the peer bench/vs_restic.py compares the agent with
}
INSTALLABLE: dict[str, ToolModule] = {**SERVERS, **TOOLS, **ON_DEMAND}


def select(names: list[str] | None, known: Mapping[str, ToolModule] = SERVERS) -> list[str]:
    """Validate names (of servers, or of anything installable); no names means all of them but
    the on-demand tools."""
    if not names:
        return [name for name in known if name not in ON_DEMAND]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ServerError(f"unknown name {', '.join(unknown)} (known: {', '.join(known)})")
    return list(dict.fromkeys(names))


__all__ = [
    "INSTALLABLE", "ON_DEMAND", "SERVERS", "TOOLS", "DockerEngine", "KubeCluster", "S3Server", "Server", "ServerError",
    "ServerModule", "ToolModule", "cache_dir", "select",
]  # fmt: skip
