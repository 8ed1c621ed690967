"""A real webhook receiver for the tests: an HTTP server on 127.0.0.1 that records every POST,
answers with a status the test chooses, can hold requests back, and can be stopped and started
again on the same port (a receiver that is down, then back)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from putplace_api.webhooks.signing import verify_signature
from tests.servers.base import free_ports
from tests.waiting import wait_until

__all__ = ["Delivery", "Receiver", "receiving"]


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered

    @property
    def payload(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    @property
    def id(self) -> str:
        return self.headers["x-putplace-delivery"]

    @property
    def event(self) -> str:
        return self.headers["x-putplace-event"]

    def signed_by(self, secret: str) -> bool:
        h = self.headers
        return verify_signature(secret, h["x-putplace-timestamp"], self.body, h["x-putplace-signature"])


@dataclass
class Receiver:
    port: int = field(default_factory=lambda: free_ports(1)[0])
    status: int = 200
    requests: list[Delivery] = field(default_factory=list)
    # Requests beyond this many wait for `gate` before they are answered (None: none waits).
    hold_after: int | None = None
    gate: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    arrived = len(receiver.requests) + 1
                if receiver.hold_after is not None and arrived > receiver.hold_after:
                    receiver.gate.wait()
                status = receiver.status
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    receiver.requests.append(Delivery(self.path, headers, body, status))
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the sender is gone (killed): what it missed, it sends again
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Down: the port refuses connections."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def delivered(self, path: str | None = None) -> list[Delivery]:
        """Deliveries answered 2xx, first arrival of each delivery id, in arrival order."""
        seen: dict[str, Delivery] = {}
        with self._lock:
            for d in self.requests:
                if 200 <= d.status < 300 and (path is None or d.path == path):
                    seen.setdefault(d.id, d)
        return list(seen.values())

    def wait_for(self, count: int, path: str | None = None, timeout: float = 60) -> list[Delivery]:
        """Once at least ``count`` deliveries arrived (to ``path``), all of them."""

        def arrived() -> list[Delivery] | None:
            got = self.delivered(path)
            return got if len(got) >= count else None

        return wait_until(arrived, timeout, f"{count} webhook deliveries")


@contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.gate.set()
        receiver.stop()
