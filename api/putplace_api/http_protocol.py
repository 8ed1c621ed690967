"""The HTTP/1.1 connection protocol the API is served with: uvicorn's httptools protocol,
reading further ahead into a request body.

uvicorn stops reading a connection as soon as 64 KiB of body wait for the app, and reads
again when the app next asks for a message. A streamed upload then costs, for every read of
the socket (~256 KiB), a pause and a resume of the transport and a wake-up of the request's
task: measured on a route that discards the body, 1.1-1.5 s of CPU per GiB, and under load
the waits between pause and resume cap the rate at ~250 MiB/s. Allowing ``BODY_BUFFER``
bytes to gather first makes each message a few MiB: 0.44 s of CPU per GiB, in line with
granian's 0.38-0.42 s (docs/benchmarks.md, "Upload"). Memory per connection stays bounded
by ``BODY_BUFFER`` (plus one socket read).

Only the body's flow control differs; parsing, keep-alive, pipelining and 100-continue are
uvicorn's. The CLI and the tests' in-process server both serve with ``UVICORN_OPTIONS``.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["BODY_BUFFER", "BodyBufferingProtocol", "UVICORN_OPTIONS"]

BODY_BUFFER = 4 * 1024 * 1024


class BodyBufferingProtocol(HttpToolsProtocol):
    """Pauses reading a request body at ``BODY_BUFFER`` bytes not yet taken by the app."""

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle.response_complete or (self.parser.should_upgrade() and self._should_upgrade()):
            return  # as uvicorn: the body of an answered request or of an upgrade is not the app's
        cycle.body += body
        if len(cycle.body) > BODY_BUFFER:
            self.flow.pause_reading()
        cycle.message_event.set()


# By import path, so that uvicorn's worker processes (--workers) load it as well.
UVICORN_OPTIONS: dict[str, Any] = {"http": f"{__name__}:BodyBufferingProtocol"}
