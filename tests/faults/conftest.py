"""Fixtures of the fault tests: real API processes (fast outage settings, no error logged),
each backend pair, agent processes, and private FerretDB and MinIO servers a test may stop.
The helpers live in ``load.py`` (load, outages, trees) and ``integrity.py`` (the checks)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from tests.api.conftest import s3_settings
from tests.faults.integrity import Objects, assert_no_error_logged, bucket_objects, local_objects
from tests.faults.load import PrivateServer
from tests.processes import Agent, ApiProcess, agent_factory, api_factory
from tests.servers import ferretdb, minio
from tests.servers.base import Server, ServerError, make_workdir
from tests.servers.s3 import S3Server, s3_ready

__all__ = ["BackendApi", "api_env_for_s3"]

# The API under test gives up on a dead database after 3 s and asks clients to come back in 1 s,
# so an outage shows quickly and the tests stay short. Not 1 s: FerretDB, busy with the agent's
# backlog on a loaded 2-core machine, took over 1 s to answer right after its restart, and a
# slow answer is rightly a 503 too.
FAST_API = {"PUTPLACE_DATABASE_TIMEOUT_SECONDS": "3", "PUTPLACE_RETRY_AFTER_SECONDS": "1"}


@pytest.fixture
def start_api(tmp_path: Path) -> Iterator[Callable[..., ApiProcess]]:
    """Start a real ``putplace-api`` process with fast outage settings (plus the given
    ``PUTPLACE_*`` variables); stopped at the end of the test."""
    started: list[ApiProcess] = []
    with api_factory(tmp_path) as start_one:

        def start(**env: str) -> ApiProcess:
            started.append(start_one(env={**FAST_API, **env}))
            return started[-1]

        yield start
    for api in started:
        assert_no_error_logged(api)


@dataclass(frozen=True)
class BackendApi:
    api: ApiProcess
    list_objects: Objects  # lists its content storage


@pytest.fixture(params=["sqlite+local", "mongodb+minio"])
def backend_api(request: pytest.FixtureRequest, start_api: Callable[..., ApiProcess]) -> BackendApi:
    """A real API process on each backend pair: the embedded defaults, and the session's FerretDB
    (a fresh database) and MinIO (a fresh bucket), which the test must not stop."""
    if request.param == "sqlite+local":
        api = start_api()
        return BackendApi(api, partial(local_objects, api.workdir / "data" / "content"))
    mongodb_url: str = request.getfixturevalue("mongodb_url")
    s3: S3Server = request.getfixturevalue("minio")
    env = api_env_for_s3(s3)
    # FerretDB answers many clients slowly on a busy machine: the usual patience, so that load is
    # not mistaken for an outage (which is what the 3 s of FAST_API is for).
    api = start_api(
        PUTPLACE_DATABASE_URL=mongodb_url.rstrip("/") + f"/pp_{uuid.uuid4().hex[:12]}",
        PUTPLACE_DATABASE_TIMEOUT_SECONDS="10",
        **env,
    )
    return BackendApi(api, partial(bucket_objects, s3, env["PUTPLACE_STORAGE_URL"].split("/")[2]))


@pytest.fixture
def make_agent(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    """Makes ``putplace-agent sync`` processes (``make_agent(api=..., root=..., node=...)``);
    any still running at the end of the test is killed."""
    with agent_factory(tmp_path) as make:
        yield make


def api_env_for_s3(server: S3Server) -> dict[str, str]:
    """The API's environment for content in a fresh bucket of ``server``."""
    return {f"PUTPLACE_{name.upper()}": str(value) for name, value in s3_settings(server).items()}


# -- private servers ----------------------------------------------------------------------------


def _private(name: str, start: Callable[[Path], Server], tmp_path: Path) -> Server:
    try:
        return start(make_workdir(name, tmp_path))
    except ServerError as error:
        failure = f"{name}: {error}"
    pytest.fail(failure, pytrace=False)


@pytest.fixture
def private_ferretdb(tmp_path: Path) -> Iterator[PrivateServer]:
    """A FerretDB of this test alone; ``server.env[ferretdb.ENV_URL]`` is its URL."""
    server = _private("ferretdb", ferretdb.start, tmp_path)
    url = server.env[ferretdb.ENV_URL]
    yield PrivateServer(server, lambda: ferretdb.ping(url))
    server.stop()


@pytest.fixture
def private_minio(tmp_path: Path) -> Iterator[tuple[PrivateServer, S3Server]]:
    """A MinIO of this test alone, and how to reach it."""
    server = _private("minio", minio.start, tmp_path)
    s3 = S3Server.from_env("minio", server.env)
    assert s3 is not None
    yield PrivateServer(server, lambda: s3_ready(s3)), s3
    server.stop()
