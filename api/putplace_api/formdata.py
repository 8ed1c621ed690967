"""Reading multipart/form-data bodies as they stream in.

FastAPI's ``UploadFile`` spools the whole part to a temporary file before the handler
runs; uploads here must instead flow straight into storage while being hashed, so the
body is fed chunk by chunk to python-multipart's push parser. ``_events`` turns its
callbacks into a stream of part events; ``file_field`` passes on one field's bytes as
they arrive, ``all_fields`` collects every part of a (size-capped) bundle.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from putplace_api.errors import BadRequest

__all__ = ["all_fields", "file_field"]

# Part events: ("begin", field name), ("data", bytes), ("end", b"")
_Event = tuple[str, str | bytes]


async def _events(body: AsyncIterator[bytes], content_type: str) -> AsyncIterator[_Event]:
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart body without a boundary")

    out: list[_Event] = []
    header_name = bytearray()
    header_value = bytearray()
    headers: dict[bytes, bytes] = {}

    def on_part_begin() -> None:
        headers.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_name).lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        out.append(("begin", disposition.get(b"name", b"").decode("latin-1")))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        out.append(("data", bytes(data[start:end])))

    def on_part_end() -> None:
        out.append(("end", b""))

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in body:
            parser.write(chunk)
            for event in out:
                yield event
            out.clear()
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from exc
    for event in out:
        yield event


async def file_field(body: AsyncIterator[bytes], content_type: str, field: str = "file") -> AsyncIterator[bytes]:
    """The bytes of the first part named ``field``, passed on as they arrive."""
    current = seen = False
    async for kind, value in _events(body, content_type):
        if kind == "begin":
            current = value == field and not seen
            seen = seen or current
        elif kind == "data" and current:
            assert isinstance(value, bytes)
            yield value
        elif kind == "end":
            current = False
    if not seen:
        raise BadRequest(f"multipart field {field!r} is missing")


async def all_fields(body: AsyncIterator[bytes], content_type: str) -> list[tuple[str, bytes]]:
    """Every part of a (size-capped) multipart body as (field name, bytes), in order."""
    parts: list[tuple[str, bytes]] = []
    name = ""
    data = bytearray()
    async for kind, value in _events(body, content_type):
        if kind == "begin":
            assert isinstance(value, str)
            name = value
            data.clear()
        elif kind == "data":
            assert isinstance(value, bytes)
            data.extend(value)
        else:
            parts.append((name, bytes(data)))
    return parts
