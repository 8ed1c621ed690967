"""The real MongoDB-wire server (FerretDB) and the real S3 server (MinIO) stopped -- or killed
with SIGKILL -- and started again while clients upload: the API answers 503 with Retry-After and
reports itself degraded meanwhile, then recovers by itself -- same process -- and nothing is
lost or corrupt."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest

from tests.faults.conftest import (
    PrivateServer,
    api_env_for_s3,
    assert_intact,
    bucket_objects,
    local_objects,
    outage_under_load,
)
from tests.processes import ApiProcess
from tests.servers import ferretdb
from tests.servers.s3 import S3Server

CRASH = pytest.mark.parametrize("crash", [False, True], ids=["stopped", "killed"])


@CRASH
def test_database_server_stopped_and_restarted_under_load(
    private_ferretdb: PrivateServer, start_api: Callable[..., ApiProcess], crash: bool
) -> None:
    url = private_ferretdb.server.env[ferretdb.ENV_URL].rstrip("/") + "/putplace"
    api = start_api(PUTPLACE_DATABASE_URL=url)
    expected = outage_under_load(api, private_ferretdb, "database", crash=crash)
    assert_intact(api, expected, partial(local_objects, api.workdir / "data" / "content"))


@CRASH
def test_s3_server_stopped_and_restarted_under_load(
    private_minio: tuple[PrivateServer, S3Server], start_api: Callable[..., ApiProcess], crash: bool
) -> None:
    server, s3 = private_minio
    env = api_env_for_s3(s3)
    api = start_api(**env)
    expected = outage_under_load(api, server, "storage", crash=crash)
    bucket = env["PUTPLACE_STORAGE_URL"].split("/")[2]
    assert_intact(api, expected, partial(bucket_objects, s3, bucket))
