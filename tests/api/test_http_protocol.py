"""The HTTP protocol the API is served with (``putplace_api.http_protocol``), over a real socket:
it reads ahead up to ``BODY_BUFFER`` bytes of a body for the app, where stock uvicorn stops at
64 KiB, and still delivers every byte in order once the app reads more slowly than it arrives."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import socket
import struct
import termios
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from putplace_api.http_protocol import BODY_BUFFER, UVICORN_OPTIONS
from tests.servers.base import free_ports

Message = dict[str, Any]


def _unread(server: uvicorn.Server) -> int:
    """Bytes the kernel holds for the server's connections that the server has not read yet."""
    total = 0
    for protocol in server.server_state.connections:
        sock = protocol.transport.get_extra_info("socket")  # type: ignore[attr-defined]
        total += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    return total


class _Recorder:
    """An ASGI app that reads a body and answers its message sizes and sha256; with
    ``read_ahead``, only once the client has sent everything and the server has read it all
    off the socket."""

    def __init__(self, read_ahead: bool) -> None:
        self.server: uvicorn.Server | None = None
        self.sent = threading.Event()
        self.read_ahead = read_ahead

    async def __call__(
        self, scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        if scope["type"] != "http":
            return
        assert self.server is not None
        deadline = time.monotonic() + 30
        while self.read_ahead and not (self.sent.is_set() and _unread(self.server) == 0):
            assert time.monotonic() < deadline, "the server stopped reading the body"
            await asyncio.sleep(0.01)
        sizes, digest = [], hashlib.sha256()
        more = True
        while more:
            message = await receive()
            sizes.append(len(message.get("body", b"")))
            digest.update(message.get("body", b""))
            more = message.get("more_body", False)
        body = json.dumps({"sizes": sizes, "sha256": digest.hexdigest()}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


@contextmanager
def _served(app: _Recorder) -> Iterator[int]:
    port = free_ports(1)[0]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off", **UVICORN_OPTIONS)
    )
    app.server = server
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _post(port: int, body: bytes, app: _Recorder) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        head = f"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        sock.sendall(head.encode() + body)
        app.sent.set()
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 200 OK", answer[:200]
    return dict(json.loads(rest.partition(b"\r\n\r\n")[2]))


def test_a_body_smaller_than_the_buffer_is_read_ahead_and_handed_over_in_one_message() -> None:
    body = os.urandom(3 * 1024 * 1024)  # 48 times what stock uvicorn reads ahead
    app = _Recorder(read_ahead=True)
    with _served(app) as port:
        answer = _post(port, body, app)
    assert answer["sha256"] == hashlib.sha256(body).hexdigest()
    assert answer["sizes"][0] == len(body)


def test_a_body_larger_than_the_buffer_arrives_whole_and_in_order() -> None:
    body = os.urandom(3 * BODY_BUFFER + 12345)
    app = _Recorder(read_ahead=False)  # the client blocks once the server pauses: read as it arrives
    with _served(app) as port:
        answer = _post(port, body, app)
    assert answer["sha256"] == hashlib.sha256(body).hexdigest()
    assert sum(answer["sizes"]) == len(body)
