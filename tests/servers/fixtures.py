"""pytest plugin: session-scoped fixtures for the real test servers.

- ``mongodb_url`` (str): ``mongodb://127.0.0.1:PORT/`` of a FerretDB (SQLite backend).
- ``seaweedfs`` / ``minio`` (``S3Server``): endpoint_url, access_key, secret_key, region, plus
  ``client()`` (boto3) and ``create_bucket(prefix)`` for a fresh, uniquely named bucket.
- ``kube`` (``KubeCluster``): a Kubernetes control plane with two kwok fake nodes: kubeconfig,
  server, plus ``kubectl(...)``, ``apply(*objects)``, ``get(...)`` and ``env()``.
- ``helm`` / ``skaffold`` (Path): the helm and skaffold binaries.
- ``docker`` (``DockerEngine``): a Docker engine on ``unix:///run/putplace/docker.sock``:
  ``host``, ``env()`` (DOCKER_HOST for a subprocess) and ``docker(*args)``; one already
  answering on that socket is reused and left running.
- ``python_base_image`` (str): the Debian base image with Python the test images build on.
- ``putplace_images`` (dict[str, str]): ``{"api"|"agent"|"operator": image ref}``, the
  project's Dockerfile targets built on that base (cached by the hash of their inputs).

A server starts only when a test first asks for its fixture and stops at the end of the session.
When the matching PUTPLACE_TEST_* variable is set (``python -m tests.servers start`` prints
them), that server is reused and nothing is started. A component that cannot be installed or
started fails the fixture (never skips). Data lives in /dev/shm when available, the server log
in pytest's tmp dir.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from . import INSTALLABLE, SERVERS, images, kind
from .base import Server, ServerError, scratch_root, workdir
from .docker import ENV_HOST as ENV_DOCKER_HOST
from .docker import DockerEngine
from .ferretdb import ENV_URL
from .kube import KubeCluster
from .s3 import S3Server

T = TypeVar("T")

LOW_SPACE = 4 << 30  # below this, servers may fail for want of room: said at the top of the run


def pytest_report_header() -> list[str]:
    """Free space where the servers' data and the tests' files go: a CI run that failed with
    S3 "internal errors" once had 8 GiB of disk and a /dev/shm filled by killed runs."""
    places = {"server data": scratch_root() or Path(tempfile.gettempdir()), "tmp": Path(tempfile.gettempdir())}
    line = []
    for what, path in places.items():
        free = shutil.disk_usage(path).free
        warn = " -- LOW: runs may fail for want of room" if free < LOW_SPACE else ""
        line.append(f"{what} {path}: {free / (1 << 30):.1f} GiB free{warn}")
    return ["test servers: " + "; ".join(line)]


def _or_fail(name: str, action: Callable[[], T]) -> T:
    """Run ``action``; a ServerError fails the test with one clean message (no traceback)."""
    try:
        return action()
    except ServerError as error:
        failure = f"{name}: {error}"
    pytest.fail(failure, pytrace=False)  # outside `except`: no chained exception in the report


def _uncaptured(request: pytest.FixtureRequest, name: str, action: Callable[[], T]) -> T:
    """``_or_fail(name, action)`` with pytest's output capture off, so build progress reaches the
    terminal."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        return _or_fail(name, action)
    with capture.global_and_fixture_disabled():
        return _or_fail(name, action)


def _install(request: pytest.FixtureRequest, name: str) -> None:
    _uncaptured(request, name, INSTALLABLE[name].install)


@contextmanager
def _running(request: pytest.FixtureRequest, name: str) -> Iterator[Server]:
    """Install and start ``name`` for the session; stop it and delete its data afterwards."""
    _install(request, name)
    log_path = request.getfixturevalue("tmp_path_factory").mktemp(name) / f"{name}.log"
    with workdir(name) as data:
        server = _or_fail(name, lambda: SERVERS[name].start(data, log_path=log_path))
        try:
            yield server
        finally:
            server.stop()


def _s3(request: pytest.FixtureRequest, name: str) -> Iterator[S3Server]:
    reused = _or_fail(name, lambda: S3Server.from_env(name, os.environ))
    if reused is not None:
        yield reused
        return
    with _running(request, name) as server:
        started = S3Server.from_env(name, server.env)
        assert started is not None  # start() always returns the PUTPLACE_TEST_<NAME>_* variables
        yield started


@pytest.fixture(scope="session")
def mongodb_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a MongoDB wire-protocol server (FerretDB), or $PUTPLACE_TEST_MONGODB_URL."""
    reused = os.environ.get(ENV_URL)
    if reused:
        yield reused
        return
    with _running(request, "ferretdb") as server:
        yield server.env[ENV_URL]


@pytest.fixture(scope="session")
def seaweedfs(request: pytest.FixtureRequest) -> Iterator[S3Server]:
    """A SeaweedFS S3 endpoint, or the one in $PUTPLACE_TEST_SEAWEEDFS_*."""
    yield from _s3(request, "seaweedfs")


@pytest.fixture(scope="session")
def minio(request: pytest.FixtureRequest) -> Iterator[S3Server]:
    """A MinIO S3 endpoint, or the one in $PUTPLACE_TEST_MINIO_*."""
    yield from _s3(request, "minio")


@pytest.fixture(scope="session")
def kube(request: pytest.FixtureRequest) -> Iterator[KubeCluster]:
    """A Kubernetes control plane with kwok fake nodes, or the one in $PUTPLACE_TEST_KUBECONFIG."""
    reused = _or_fail("kube", lambda: KubeCluster.from_env(os.environ))
    if reused is not None:
        yield reused
        return
    with _running(request, "kube") as server:
        started = KubeCluster.from_env(server.env)
        assert started is not None  # start() always returns PUTPLACE_TEST_KUBECONFIG
        yield started


@pytest.fixture(scope="session")
def helm(request: pytest.FixtureRequest) -> Path:
    """The helm command line (built once into the cache)."""
    _install(request, "helm")
    return INSTALLABLE["helm"].binary()


@pytest.fixture(scope="session")
def chromium(request: pytest.FixtureRequest) -> Path:
    """Debian's chromium (apt-installed once), for Playwright's ``executable_path``."""
    _install(request, "chromium")
    return INSTALLABLE["chromium"].binary()


@pytest.fixture(scope="session")
def skaffold(request: pytest.FixtureRequest) -> Path:
    """The skaffold command line (built once into the cache)."""
    _install(request, "skaffold")
    return INSTALLABLE["skaffold"].binary()


@pytest.fixture(scope="session")
def docker(request: pytest.FixtureRequest) -> Iterator[DockerEngine]:
    """A Docker engine (dockerd, data root in the cache), or the one in $PUTPLACE_TEST_DOCKER_HOST."""
    reused = _or_fail("docker", lambda: DockerEngine.from_env(os.environ))
    if reused is not None:
        yield reused
        return
    with _running(request, "docker") as server:
        yield DockerEngine(server.env[ENV_DOCKER_HOST])


@pytest.fixture(scope="session")
def python_base_image(request: pytest.FixtureRequest, docker: DockerEngine) -> str:
    """The Debian bookworm image with Python 3.11 and the host's CA bundle (built once, cached)."""
    return _uncaptured(request, "images", lambda: images.python_image(docker))


@pytest.fixture(scope="session")
def putplace_images(request: pytest.FixtureRequest, docker: DockerEngine, python_base_image: str) -> dict[str, str]:
    """``{target: image ref}`` of the Dockerfile's api, agent and operator images, built on the base."""
    return _uncaptured(request, "images", lambda: images.project_images(docker))


@pytest.fixture(scope="session")
def kind_node_image(request: pytest.FixtureRequest, docker: DockerEngine) -> str:
    """The kind node image (tests/servers/kind.py: every part built here), with the kind CLI."""
    _uncaptured(request, "kind", kind.install_binaries)
    return _uncaptured(request, "kind", lambda: kind.node_image(docker, images.debian_image(docker)))
