"""File names as the protocol and the catalogue carry them: text, and whether it is escaped.

A POSIX file name is a byte string; JSON, SQLite and BSON hold text. A name therefore travels
and is stored as a pair (``filepath``, ``filepath_escaped``):

- ``filepath_escaped`` false -- nearly every name: the name is valid UTF-8 and ``filepath`` is
  that text, verbatim (a backslash is just a backslash).
- ``filepath_escaped`` true: the name is *not* valid UTF-8 and ``filepath`` is its escaped
  form. The text it holds stays as it is, except that each backslash is written ``\\\\`` and
  each byte that is not part of valid UTF-8 is written ``\\xNN`` (two lowercase hex digits).
  Exactly one byte string has a given escaped form.

So the text ``\\xe9`` (four characters) is the name ``("\\xe9", false)`` and the byte 0xE9 is
``("\\xe9", true)``: two names, never one. The escaped form of a name is *canonical*: decoding
it and escaping the bytes again gives the same text, and it never stands for valid UTF-8.

Python holds a non-UTF-8 name as ``os.fsdecode`` gives it (each undecodable byte a lone
surrogate U+DC80..U+DCFF, which ``json.dumps`` writes as ``\\udcXX``); ``from_text`` turns such
a string into its pair. Nothing here imports server code.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = [
    "Name",
    "MalformedName",
    "escape",
    "unescape",
    "from_bytes",
    "from_text",
    "canonical",
    "to_bytes",
    "escaped_prefix",
]


class MalformedName(ValueError):
    """A text claimed to be an escaped name is not one (a stray backslash, a lone surrogate)."""


class Name(NamedTuple):
    """A file name as stored: ``filepath`` is verbatim text unless ``escaped`` (see the module doc)."""

    filepath: str
    escaped: bool = False


# In a string decoded with surrogateescape: a backslash, or a byte that was not UTF-8.
_TO_ESCAPE = re.compile("[\\\\\udc80-\udcff]")
# In an escaped form: a backslash and what it escapes (nothing valid: a malformed form).
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|\\)?")


def _escape_char(match: re.Match[str]) -> str:
    c = match.group()
    return "\\\\" if c == "\\" else f"\\x{ord(c) - 0xDC00:02x}"


def escape(raw: bytes) -> str:
    """The escaped form of any byte string (backslashes doubled, each non-UTF-8 byte ``\\xNN``)."""
    return _TO_ESCAPE.sub(_escape_char, raw.decode("utf-8", "surrogateescape"))


def unescape(text: str) -> bytes:
    """The bytes an escaped form stands for; ``MalformedName`` if it is not one."""
    out = bytearray()
    pos = 0
    try:
        for m in _ESCAPE.finditer(text):
            token = m.group(1)
            if token is None:
                raise MalformedName(
                    f"a backslash at character {m.start()} is followed by neither a backslash nor xNN "
                    "(a literal backslash is written \\\\ in an escaped name)"
                )
            out += text[pos : m.start()].encode("utf-8")
            out += b"\\" if token == "\\" else bytes((int(token[1:], 16),))
            pos = m.end()
        out += text[pos:].encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: bytes are written \xNN in an escaped name
        raise MalformedName("an escaped name holds a lone surrogate; write each byte as \\xNN") from None
    return bytes(out)


def from_bytes(raw: bytes) -> Name:
    """The name of a byte string: verbatim when it is UTF-8, escaped otherwise."""
    try:
        return Name(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return Name(escape(raw), True)


def _encode(value: str) -> bytes:
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that are not escaped bytes (e.g. JSON's \ud800)
        return value.encode("utf-8", "surrogatepass")


def from_text(value: str) -> Name:
    """The name of a Python string that may hold lone surrogates (``os.fsdecode``'s, or JSON's)."""
    if value.isascii():  # the common case, without an encode
        return Name(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return from_bytes(_encode(value))
    return Name(value)


def canonical(filepath: str, escaped: bool) -> Name:
    """The canonical pair for a name as a client may send it: plain text (lone surrogates
    allowed), or an escaped form -- which may stand for valid UTF-8 (then the plain name is
    returned) or use upper-case hex digits. ``MalformedName`` if an escaped form does not decode."""
    return from_bytes(unescape(filepath)) if escaped else from_text(filepath)


def to_bytes(name: Name) -> bytes:
    """The byte string a stored name stands for."""
    return unescape(name.filepath) if name.escaped else name.filepath.encode("utf-8")


def escaped_prefix(text: str) -> str:
    """What a plain-text prefix looks like at the start of escaped names: a name's bytes start
    with the text's bytes exactly when its escaped form starts with this."""
    return text.replace("\\", "\\\\")
