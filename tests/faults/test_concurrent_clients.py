"""Fifty clients, each a different host, uploading overlapping sets of the same contents at the
same moment, against one API process: exactly one object per content, every record, no 5xx."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from functools import partial

import httpx
import pytest

from tests.api.conftest import ADMIN_KEY, meta
from tests.faults.conftest import Key, Objects, api_env_for_s3, assert_intact, bucket_objects, local_objects, sha
from tests.processes import ApiProcess
from tests.servers.s3 import S3Server

CLIENTS = 50
# Ten contents of 20 KB to 200 KB; host i holds content j unless (i + j) % 3 == 0, so every
# content is held by about 33 hosts and every host holds 6 or 7 of them.
CONTENTS = [f"shared content {j}\n".encode().ljust(20_000 * (j + 1), b"x") for j in range(10)]


def holdings(host: int) -> dict[str, bytes]:
    return {f"/shared/{j}": data for j, data in enumerate(CONTENTS) if (host + j) % 3}


@pytest.mark.parametrize("backends", ["sqlite+local", "mongodb+minio"])
def test_fifty_hosts_uploading_the_same_contents_at_once(
    backends: str, request: pytest.FixtureRequest, start_api: Callable[..., ApiProcess]
) -> None:
    if backends == "sqlite+local":
        api = start_api()
        list_objects: Objects = partial(local_objects, api.workdir / "data" / "content")
    else:
        mongodb_url: str = request.getfixturevalue("mongodb_url")
        s3: S3Server = request.getfixturevalue("minio")
        env = api_env_for_s3(s3)
        # FerretDB answers fifty clients slowly on a busy machine: give it the usual patience, so
        # that load is not mistaken for an outage (which is what the fault tests' 1 s is for).
        api = start_api(
            PUTPLACE_DATABASE_URL=mongodb_url.rstrip("/") + f"/pp_{uuid.uuid4().hex[:12]}",
            PUTPLACE_DATABASE_TIMEOUT_SECONDS="10",
            **env,
        )
        bucket = env["PUTPLACE_STORAGE_URL"].split("/")[2]
        list_objects = partial(bucket_objects, s3, bucket)

    start = threading.Barrier(CLIENTS)
    statuses: list[tuple[str, int, str]] = []
    errors: list[BaseException] = []

    def client(host: int) -> None:
        try:
            with httpx.Client(base_url=api.url, headers={"X-API-Key": ADMIN_KEY}, timeout=60) as c:
                start.wait(30)
                for path, data in holdings(host).items():
                    r = c.post("/put_file", json=meta(data, hostname=f"host-{host}", filepath=path))
                    statuses.append(("put_file", r.status_code, r.text[:200]))
                    if r.status_code == 201 and r.json()["upload_required"]:
                        r = c.post(f"/upload_file/{sha(data)}", content=data)
                        statuses.append(("upload_file", r.status_code, r.text[:200]))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "clients still waiting after 120 s"
    assert not errors, errors[:3]
    unexpected = [s for s in statuses if s[1] not in (200, 201)]
    assert not unexpected, f"{len(unexpected)} answers other than 200/201, e.g. {unexpected[:3]}"

    expected: dict[Key, str] = {
        (f"host-{i}", path): sha(data) for i in range(CLIENTS) for path, data in holdings(i).items()
    }
    assert sorted(list_objects()) == sorted(sha(data) for data in CONTENTS)  # one object per content
    assert_intact(api, expected, list_objects)
    assert len(api.records()) == len(expected)
