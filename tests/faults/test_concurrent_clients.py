"""Fifty clients, each a different host, uploading overlapping sets of the same contents at the
same moment, against one API process: exactly one object per content, every record, no 5xx."""

from __future__ import annotations

import threading

import httpx

from tests.api.conftest import ADMIN_KEY, meta
from tests.faults.conftest import BackendApi
from tests.faults.integrity import Key, assert_intact, sha

CLIENTS = 50
# Ten contents of 20 KB to 200 KB; host i holds content j unless (i + j) % 3 == 0, so every
# content is held by about 33 hosts and every host holds 6 or 7 of them.
CONTENTS = [f"shared content {j}\n".encode().ljust(20_000 * (j + 1), b"x") for j in range(10)]


def holdings(host: int) -> dict[str, bytes]:
    return {f"/shared/{j}": data for j, data in enumerate(CONTENTS) if (host + j) % 3}


def test_fifty_hosts_uploading_the_same_contents_at_once(backend_api: BackendApi) -> None:
    api, list_objects = backend_api.api, backend_api.list_objects

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
