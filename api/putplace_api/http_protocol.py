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

BODY_BUFFER = 4 << 20


class _BodyPieces:
    """The body bytes read ahead, kept as the pieces the socket gave until the app takes them.

    uvicorn gathers them in a ``bytearray`` and hands the app ``bytes(body)``: two copies of
    every byte, a few MiB at a time on the event loop. Kept as pieces, they are joined once when
    the app takes them (``bytes()`` calls ``__bytes__``), and a single piece not at all."""

    __slots__ = ("_pieces", "_size")

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self._size = 0

    def append(self, piece: bytes) -> None:
        self._pieces.append(piece)
        self._size += len(piece)

    def __len__(self) -> int:
        return self._size

    def __bytes__(self) -> bytes:
        return self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)


class BodyBufferingProtocol(HttpToolsProtocol):
    """Pauses reading a request body at ``BODY_BUFFER`` bytes not yet taken by the app."""

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle.response_complete or (self.parser.should_upgrade() and self._should_upgrade()):
            return  # as uvicorn: the body of an answered request or of an upgrade is not the app's
        pending: bytearray | _BodyPieces = cycle.body
        if not isinstance(pending, _BodyPieces):
            # uvicorn leaves an empty bytearray after each message it hands over (and nothing
            # but this method adds to it), so nothing is dropped here.
            pending = _BodyPieces()
            cycle.body = pending  # type: ignore[assignment]
        pending.append(body)
        if len(pending) > BODY_BUFFER:
            self.flow.pause_reading()
        cycle.message_event.set()


# By import path, so that uvicorn's worker processes (--workers) load it as well.
UVICORN_OPTIONS: dict[str, Any] = {"http": f"{__name__}:BodyBufferingProtocol"}
