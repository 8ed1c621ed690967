"""Fixtures that run the real API on 127.0.0.1 (uvicorn in a thread) over real backends."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from putplace_api.app import create_app
from putplace_api.http_protocol import UVICORN_OPTIONS
from putplace_api.settings import Settings
from putplace_api.storage import ContentStorage
from tests.servers.base import free_ports

T = TypeVar("T")

ADMIN_KEY = "pp_test_admin_key_0123456789abcdefghijklmnopqrstuv"


@dataclass
class Api:
    url: str
    admin_key: str
    settings: Settings
    served: Served | None = None  # the app and its event loop, for tests that reach into it

    def http(self, key: str | None = ADMIN_KEY, **kwargs: Any) -> httpx.Client:
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def new_key(self, *scopes: str, **fields: Any) -> str:
        with self.http() as c:
            r = c.post("/api_keys", json={"name": "test", "scopes": list(scopes) or ["read", "write"], **fields})
            assert r.status_code == 201, r.text
            return str(r.json()["api_key"])


@dataclass(frozen=True)
class Served:
    url: str
    app: FastAPI
    loop: asyncio.AbstractEventLoop

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the server's event loop (the app's objects are not thread-safe)."""

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=30)


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """Serve create_app(settings) on a free port until the block ends."""
    with serve_app(settings) as served:
        yield served.url


@contextmanager
def serve_app(settings: Settings) -> Iterator[Served]:
    """``serve``, also giving the app and the event loop it runs on."""
    port = free_ports(1)[0]
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on", **UVICORN_OPTIONS)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"api-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the API server exited during start-up")
        if time.monotonic() > deadline:
            raise TimeoutError("the API server did not start within 30 s")
        time.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{port}", app, server.servers[0].get_loop())
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"data_dir": tmp / "data", "admin_key": ADMIN_KEY, "log_level": "warning"}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def start_api(tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """Start an API with settings overrides; stopped at the end of the test."""
    stack: list[Any] = []

    def start(**overrides: Any) -> Api:
        settings = make_settings(tmp_path / f"api{len(stack)}", **overrides)
        cm = serve_app(settings)
        served = cm.__enter__()
        stack.append(cm)
        return Api(served.url, ADMIN_KEY, settings, served)

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


@pytest.fixture
def api(start_api: Callable[..., Api]) -> Api:
    """An API on the embedded defaults: SQLite and local content storage."""
    return start_api()


@pytest.fixture(params=["sqlite+local", "mongodb+s3"])
def backend_api(request: pytest.FixtureRequest, start_api: Callable[..., Api]) -> Api:
    """The API on each backend pair: the embedded defaults, and FerretDB (MongoDB wire) + SeaweedFS."""
    if request.param == "sqlite+local":
        return start_api()
    url = request.getfixturevalue("mongodb_url").rstrip("/") + f"/pp_{uuid.uuid4().hex[:12]}"
    return start_api(database_url=url, **s3_settings(request.getfixturevalue("seaweedfs")))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def put_objects(storage: ContentStorage, items: Iterable[tuple[str, bytes]]) -> None:
    """Objects written straight to storage, one per content as a single upload writes them,
    under the names given (the bytes are not checked)."""

    async def put(name: str, data: bytes) -> None:
        writer = await storage.writer(name)
        await writer.write(data)
        await writer.commit()

    await asyncio.gather(*(put(name, data) for name, data in items))


def meta(data: bytes = b"hello\n", **overrides: Any) -> dict[str, Any]:
    """A put_file body for content ``data``."""
    body: dict[str, Any] = {
        "filepath": "/var/log/app.log",
        "hostname": "node-1",
        "ip_address": "10.0.0.1",
        "sha256": sha(data),
        "file_size": len(data),
        "file_mode": 0o100644,
        "file_uid": 1000,
        "file_gid": 1000,
        "file_mtime": 1_700_000_000.5,
        "file_atime": 1_700_000_001.25,
        "file_ctime": 1_700_000_000.5,
    }
    body.update(overrides)
    return body


def s3_settings(server: Any, prefix: str = "content/") -> dict[str, Any]:
    """Settings overrides that put content in a fresh bucket of an S3 test server."""
    bucket = server.create_bucket("putplace")
    return {
        "storage_url": f"s3://{bucket}/{prefix}",
        "s3_endpoint_url": server.endpoint_url,
        "s3_access_key_id": server.access_key,
        "s3_secret_access_key": server.secret_key,
        "s3_region": server.region,
    }


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def otlp() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """A real OTLP/HTTP receiver on 127.0.0.1: its endpoint, and the (path, content type, body) of each export."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Receiver.received
    finally:
        server.shutdown()
