"""Traces reach a real OTLP/HTTP receiver when an endpoint is configured."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.api.conftest import make_settings, meta, serve


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
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Receiver.received
    finally:
        server.shutdown()


def test_request_spans_are_exported_over_otlp_http(
    tmp_path: Path, otlp: tuple[str, list[tuple[str, str, bytes]]]
) -> None:
    import httpx

    endpoint, received = otlp
    settings = make_settings(tmp_path, otlp_endpoint=endpoint)
    with serve(settings) as url:
        r = httpx.post(f"{url}/put_file", json=meta(), headers={"X-API-Key": settings.admin_key.get_secret_value()})  # type: ignore[union-attr]
        assert r.status_code == 201
    # Shutting the app down flushed the batch.
    assert received, "no spans were exported"
    paths = {p for p, _, _ in received}
    assert paths == {"/v1/traces"}
    assert all(ct == "application/x-protobuf" for _, ct, _ in received)
    payload = b"".join(body for _, _, body in received)
    assert b"putplace-api" in payload and b"/put_file" in payload
    assert settings.admin_key.get_secret_value().encode() not in payload  # type: ignore[union-attr]
