"""Streaming extraction of one file field from a multipart/form-data body.

FastAPI's ``UploadFile`` spools the whole part to a temporary file before the handler
runs; uploads here must instead flow straight into storage while being hashed, so the
body is fed chunk by chunk to python-multipart's push parser and only the ``file``
field's bytes are passed on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from putplace_api.errors import BadRequest

__all__ = ["all_fields", "file_field"]


async def file_field(body: AsyncIterator[bytes], content_type: str, field: str = "file") -> AsyncIterator[bytes]:
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart body without a boundary")

    out: list[bytes] = []
    header_name = bytearray()
    header_value = bytearray()
    headers: dict[bytes, bytes] = {}
    state = {"current": False, "seen": False}

    def on_part_begin() -> None:
        headers.clear()
        state["current"] = False

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
        is_file = disposition.get(b"name") == field.encode() and not state["seen"]
        state["current"] = is_file
        state["seen"] = state["seen"] or is_file

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["current"]:
            out.append(bytes(data[start:end]))

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
        },
    )
    try:
        async for chunk in body:
            parser.write(chunk)
            if out:
                for piece in out:
                    yield piece
                out.clear()
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from exc
    for piece in out:
        yield piece
    if not state["seen"]:
        raise BadRequest(f"multipart field {field!r} is missing")


async def all_fields(body: AsyncIterator[bytes], content_type: str) -> list[tuple[str, bytes]]:
    """Every part of a (size-capped) multipart body as (field name, bytes), in order."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart body without a boundary")
    parts: list[tuple[str, bytes]] = []
    header_name = bytearray()
    header_value = bytearray()
    headers: dict[bytes, bytes] = {}
    data = bytearray()

    def on_part_begin() -> None:
        headers.clear()
        data.clear()

    def on_header_field(chunk: bytes, start: int, end: int) -> None:
        header_name.extend(chunk[start:end])

    def on_header_value(chunk: bytes, start: int, end: int) -> None:
        header_value.extend(chunk[start:end])

    def on_header_end() -> None:
        headers[bytes(header_name).lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_part_data(chunk: bytes, start: int, end: int) -> None:
        data.extend(chunk[start:end])

    def on_part_end() -> None:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("latin-1")
        parts.append((name, bytes(data)))

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from exc
    return parts
