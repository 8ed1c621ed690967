"""The baseline of put_file_rps.py: the smallest FastAPI app that does what any JSON
endpoint must -- parse the same 11-field body into a pydantic model and send it back.
Also the framework ceiling row of upload_large.py: ``POST /upload_file/{sha256}`` reads
the raw body as a stream and discards it (no hashing, no writing).

No auth, no database, no middleware. Served by the same ``uvicorn.run(...)`` call (same
options, same loop and HTTP implementation: uvloop and putplace's httptools protocol,
``putplace_api.http_protocol``) and the same log level as ``putplace-api`` with one worker.
``--stock-uvicorn``: uvicorn's own httptools protocol instead (upload_large.py's reference row).

    python bench/bare_app.py PORT [--stock-uvicorn]
"""

from __future__ import annotations

import logging
import sys

import uvicorn
from fastapi import FastAPI, Request
from pydantic import BaseModel

from putplace_api.http_protocol import UVICORN_OPTIONS


class Meta(BaseModel):
    filepath: str
    hostname: str
    ip_address: str
    sha256: str
    file_size: int
    file_mode: int
    file_uid: int
    file_gid: int
    file_mtime: float
    file_atime: float
    file_ctime: float


app = FastAPI()


@app.post("/put_file", status_code=201)
async def put_file(body: Meta) -> Meta:
    return body


@app.post("/upload_file/{sha256}")
async def upload_file(sha256: str, request: Request) -> dict[str, int]:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return {"size": size}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    port = int(sys.argv[1])
    # As putplace-api with PUTPLACE_LOG_LEVEL=warning: root at WARNING, no uvicorn access log.
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("uvicorn.access").disabled = True
    options = {"http": "httptools"} if "--stock-uvicorn" in sys.argv[2:] else UVICORN_OPTIONS
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, timeout_graceful_shutdown=30, **options)
