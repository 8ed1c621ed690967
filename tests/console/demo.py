"""A small catalogue for the console's tests and screenshots: two nodes, a shared content,
a file with history, a text and an image that can be previewed."""

from __future__ import annotations

import hashlib
import struct
import zlib
from typing import Any

import httpx

from tests.api.conftest import meta


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A real PNG of one colour (no imaging library needed for one)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


NGINX_CONF = b"worker_processes auto;\nevents { worker_connections 1024; }\n"
APP_V1 = b"replicas: 1\n"
APP_V2 = b"replicas: 3\nimage: putplace/api:0.1.0\n"
LOGO = png(48, 32, (10, 88, 202))
SHARED = b"#!/bin/sh\necho shared entrypoint\n"

# (node, path, content, uploaded): the order they are announced in
FILES: list[tuple[str, str, bytes, bool]] = [
    ("node-1", "/etc/nginx/nginx.conf", NGINX_CONF, True),
    ("node-1", "/etc/app/config.yaml", APP_V1, True),
    ("node-1", "/srv/www/logo.png", LOGO, True),
    ("node-1", "/usr/local/bin/entrypoint.sh", SHARED, True),
    ("node-2", "/opt/tools/entrypoint.sh", SHARED, True),
    ("node-2", "/var/log/syslog", b"Dec  3 07:00:00 node-2 kernel: booted\n" * 40, False),
    ("node-3", "/home/ops/notes.txt", b"rotate keys on Monday\n", True),
    ("node-1", "/etc/app/config.yaml", APP_V2, True),  # a second version: history
]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def seed(client: httpx.Client) -> None:
    """Announce and upload the demo catalogue through the public API."""
    for node, path, data, upload in FILES:
        body: dict[str, Any] = meta(
            data, hostname=node, filepath=path, file_mode=0o100755 if path.endswith(".sh") else 0o100644
        )
        response = client.post("/put_file", json=body)
        assert response.status_code == 201, response.text
        if upload and response.json()["upload_required"]:
            uploaded = client.post(f"/upload_file/{sha(data)}", content=data)
            assert uploaded.status_code == 200, uploaded.text
