"""The PutPlace protocol client, used by the agent, the operator and the tests.

Async, typed, one ``httpx.AsyncClient`` underneath. Pass ``transport=`` to talk to an app
in-process (``httpx.ASGITransport``) or to anything else httpx can.
"""

from __future__ import annotations

import os
import secrets
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import httpx

from putplace_client import names
from putplace_client.errors import CertificateError, ContentChanged, TransportError, status_error
from putplace_client.models import (
    CHUNK_SHA256_HEADER,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyInfo,
    BatchUploadItem,
    BatchUploadResponse,
    ChunkReceived,
    DeadLetter,
    FileMetadata,
    FileRecord,
    HistoryRecord,
    Page,
    PutFileResponse,
    PutFileResult,
    PutFilesRequest,
    PutFilesResponse,
    ReplayResponse,
    Scope,
    Stats,
    UploadResponse,
    UploadSession,
    UploadSessionCreate,
    WebhookCreate,
    WebhookCreated,
    WebhookEvent,
    WebhookInfo,
    escape_path,
)

__all__ = ["PutPlaceClient", "UPLOAD_CHUNK"]

UPLOAD_CHUNK = 1024 * 1024
_JSON = {"Content-Type": "application/json"}


def _name_params(param: str, value: str, escaped: bool) -> dict[str, str]:
    """Query parameters naming a file (or a prefix): ``value`` is a name as Python holds it
    (lone surrogates for bytes that are not UTF-8), or an escaped form when ``escaped``."""
    name = names.Name(value, True) if escaped else names.from_text(value)
    return {param: name.filepath, f"{param}_escaped": "true"} if name.escaped else {param: name.filepath}


async def _file_chunks(f: anyio.AsyncFile[bytes], size: int, start: int = 0) -> AsyncGenerator[bytes, None]:
    """Exactly ``size`` bytes (the declared Content-Length) of an open file from ``start``, 1 MiB at a time."""
    try:
        if start:
            await f.seek(start)
        left = size
        while left > 0:
            chunk = await f.read(min(UPLOAD_CHUNK, left))
            if not chunk:
                raise ContentChanged(f"{f.name} shrank while it was uploaded")
            left -= len(chunk)
            yield chunk
    finally:
        await f.aclose()


def _certificate_refusal(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure under an httpx error (httpcore wraps ssl's), if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class PutPlaceClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        ca_bundle: str | Path | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``ca_bundle``: PEM file of the CAs trusted for an https server (default: the system's)."""
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, read=max(timeout, 300.0)),
            verify=ssl.create_default_context(cafile=str(ca_bundle)) if ca_bundle is not None else True,
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if "params" in kwargs:
            # A host name with lone surrogates (os.fsdecode's), which no URL can carry: as the
            # catalogue stores it. File names are pairs already (_name_params).
            kwargs["params"] = {k: escape_path(v) if isinstance(v, str) else v for k, v in kwargs["params"].items()}
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            refused = _certificate_refusal(exc)
            if refused is not None:
                raise CertificateError(
                    f"the TLS certificate of {self._http.base_url} is not trusted: {refused.verify_message}"
                ) from exc
            raise TransportError(f"{method} {url}: {exc!r}") from exc
        if response.is_error:
            raise status_error(response)
        return response

    # -- health --------------------------------------------------------------------------
    async def health(self) -> dict[str, Any]:
        data: dict[str, Any] = (await self._send("GET", "/health")).json()
        return data

    # -- files ---------------------------------------------------------------------------
    async def put_file(self, meta: FileMetadata) -> PutFileResponse:
        r = await self._send("POST", "/put_file", json=meta.model_dump(mode="json"))
        return PutFileResponse.model_validate(r.json())

    async def put_files(self, metas: Sequence[FileMetadata]) -> list[PutFileResult]:
        # Serialized and parsed by pydantic in one call each, not a dict per record through the
        # json module: a fifth of the CPU per 1,000 records (the agent's initial sync sends many).
        body = PutFilesRequest.model_construct(files=list(metas)).model_dump_json().encode()
        r = await self._send("POST", "/put_files", content=body, headers=_JSON)
        return PutFilesResponse.model_validate_json(r.content).files

    async def upload(
        self,
        sha256: str,
        source: Path | str | bytes,
        *,
        hostname: str | None = None,
        filepath: str | None = None,
        filepath_escaped: bool = False,
    ) -> UploadResponse:
        """Upload content as a raw streamed body (a file is read 1 MiB at a time).

        A file is sent at the size it had when opened: one that grows meanwhile is cut there
        (the server's hash check then tells whether those bytes are still the announced
        content); one that shrinks raises ``ContentChanged``.
        """
        body: bytes | AsyncGenerator[bytes, None]
        headers = {"Content-Type": "application/octet-stream"}
        if isinstance(source, bytes):
            body = source
        else:
            f = await anyio.open_file(source, "rb")
            size = os.fstat(f.wrapped.fileno()).st_size
            body = _file_chunks(f, size)
            headers["Content-Length"] = str(size)  # a known length, not chunked
        params = {} if hostname is None else {"hostname": hostname}
        if filepath is not None:
            params |= _name_params("filepath", filepath, filepath_escaped)
        try:
            r = await self._send("POST", f"/upload_file/{sha256}", params=params, content=body, headers=headers)
        finally:
            if not isinstance(body, bytes):
                await body.aclose()  # closes the file even if the body was never read
        return UploadResponse.model_validate(r.json())

    async def upload_many(self, contents: Sequence[tuple[str, bytes]]) -> list[BatchUploadItem]:
        """Upload many small contents in one request (``POST /upload_files``); one result per item."""
        # One body built at once: httpx's multipart encoder writes every part in several small
        # socket writes, which costs more CPU than the rest of the agent's work per small file.
        boundary = secrets.token_hex(16)
        pieces: list[bytes] = []
        for sha256, data in contents:
            pieces.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{sha256}"; filename="{sha256}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n".encode()
            )
            pieces.append(data)
            pieces.append(b"\r\n")
        pieces.append(f"--{boundary}--\r\n".encode())
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        r = await self._send("POST", "/upload_files", content=b"".join(pieces), headers=headers)
        return BatchUploadResponse.model_validate(r.json()).files

    # -- upload sessions: chunked, resumable uploads of large contents --------------------
    async def create_upload_session(self, sha256: str, size: int) -> UploadSession:
        """Open a session for an announced content (``ConflictError``: it is stored already)."""
        body = UploadSessionCreate(sha256=sha256, size=size).model_dump(mode="json")
        return UploadSession.model_validate((await self._send("POST", "/uploads", json=body)).json())

    async def upload_session(self, upload_id: str) -> UploadSession:
        """The session with the chunks the server holds."""
        return UploadSession.model_validate((await self._send("GET", f"/uploads/{upload_id}")).json())

    async def put_chunk(
        self,
        session: UploadSession,
        number: int,
        source: Path | str | bytes,
        *,
        chunk_sha256: str | None = None,
    ) -> ChunkReceived:
        """Send chunk ``number``: ``bytes`` as they are, or that chunk's span of a file, read 1 MiB
        at a time (``ContentChanged`` if the file is shorter now)."""
        start, end = session.chunk_span(number)
        headers = {"Content-Type": "application/octet-stream"}
        if chunk_sha256 is not None:
            headers[CHUNK_SHA256_HEADER] = chunk_sha256
        body: bytes | AsyncGenerator[bytes, None]
        if isinstance(source, bytes):
            body = source
        else:
            body = _file_chunks(await anyio.open_file(source, "rb"), end - start, start)
            headers["Content-Length"] = str(end - start)
        url = f"/uploads/{session.upload_id}/chunks/{number}"
        try:
            r = await self._send("PUT", url, content=body, headers=headers)
        finally:
            if not isinstance(body, bytes):
                await body.aclose()
        return ChunkReceived.model_validate(r.json())

    async def complete_upload_session(
        self,
        upload_id: str,
        *,
        hostname: str | None = None,
        filepath: str | None = None,
        filepath_escaped: bool = False,
    ) -> UploadResponse:
        """Have the server assemble and verify the content (it hashes the whole: allow time)."""
        params = {} if hostname is None else {"hostname": hostname}
        if filepath is not None:
            params |= _name_params("filepath", filepath, filepath_escaped)
        r = await self._send("POST", f"/uploads/{upload_id}/complete", params=params)
        return UploadResponse.model_validate(r.json())

    async def abort_upload_session(self, upload_id: str) -> None:
        await self._send("DELETE", f"/uploads/{upload_id}")

    async def upload_chunked(
        self,
        session: UploadSession,
        source: Path | str,
        *,
        parallel: int = 4,
        hostname: str | None = None,
        filepath: str | None = None,
        filepath_escaped: bool = False,
    ) -> UploadResponse:
        """Send the chunks ``session`` lacks, ``parallel`` at a time, then complete it. Give it a
        session from ``upload_session`` to resume: held chunks are not sent again."""
        missing = iter(session.missing())
        failures: list[Exception] = []  # the first ends every sender; it is raised as one upload's

        async def sender() -> None:
            try:
                for number in missing:  # one shared iterator: each chunk is taken by one sender
                    await self.put_chunk(session, number, source)
            except Exception as exc:
                failures.append(exc)
                senders.cancel_scope.cancel()

        async with anyio.create_task_group() as senders:
            for _ in range(max(1, parallel)):
                senders.start_soon(sender)
        if failures:
            raise failures[0]
        return await self.complete_upload_session(
            session.upload_id, hostname=hostname, filepath=filepath, filepath_escaped=filepath_escaped
        )

    async def get_file(self, sha256: str) -> FileRecord:
        return FileRecord.model_validate((await self._send("GET", f"/get_file/{sha256}")).json())

    async def download(self, sha256: str, start: int | None = None, end: int | None = None) -> bytes:
        headers = {}
        if start is not None or end is not None:
            headers["Range"] = f"bytes={start or 0}-{'' if end is None else end - 1}"
        return (await self._send("GET", f"/content/{sha256}", headers=headers)).content

    async def list_files(
        self,
        *,
        hostname: str | None = None,
        path_prefix: str | None = None,
        path_prefix_escaped: bool = False,
        sha256: str | None = None,
        changed_since: datetime | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[FileRecord]:
        """``path_prefix``: plain text (lone surrogates allowed) matches every name under it;
        an escaped form (``path_prefix_escaped``) only the escaped names under it."""
        params: dict[str, Any] = {"limit": limit}
        if path_prefix is not None:
            params |= _name_params("path_prefix", path_prefix, path_prefix_escaped)
        for key, value in (
            ("hostname", hostname),
            ("sha256", sha256),
            ("changed_since", changed_since.isoformat() if changed_since else None),
            ("cursor", cursor),
        ):
            if value is not None:
                params[key] = value
        r = await self._send("GET", "/files", params=params)
        return Page[FileRecord].model_validate(r.json())

    async def iter_files(self, **filters: Any) -> AsyncIterator[FileRecord]:
        cursor = None
        while True:
            page = await self.list_files(cursor=cursor, **filters)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def history(
        self, hostname: str, filepath: str, limit: int = 100, *, filepath_escaped: bool = False
    ) -> Page[HistoryRecord]:
        """``filepath``: a name as Python holds it, or its escaped form with ``filepath_escaped``
        (as a record shows it)."""
        params = {"hostname": hostname, "limit": limit, **_name_params("filepath", filepath, filepath_escaped)}
        return Page[HistoryRecord].model_validate((await self._send("GET", "/files/history", params=params)).json())

    async def delete_file(self, hostname: str, filepath: str, *, filepath_escaped: bool = False) -> None:
        """``filepath`` as for ``history``."""
        params = {"hostname": hostname, **_name_params("filepath", filepath, filepath_escaped)}
        await self._send("DELETE", "/files", params=params)

    async def stats(self) -> Stats:
        return Stats.model_validate((await self._send("GET", "/stats")).json())

    # -- keys ----------------------------------------------------------------------------
    async def create_key(
        self,
        name: str,
        scopes: Iterable[Scope | str] = (Scope.READ, Scope.WRITE),
        *,
        description: str | None = None,
        rate_limit: float | None = None,
        rate_limit_burst: int | None = None,
        expires_at: datetime | None = None,
        hostnames: Sequence[str] | None = None,
        path_prefixes: Sequence[str] | None = None,
        max_bytes: int | None = None,
        max_files: int | None = None,
    ) -> ApiKeyCreated:
        """A new key; ``hostnames``, ``path_prefixes`` and the quotas limit it (None: no limit)."""
        body = ApiKeyCreate(
            name=name,
            description=description,
            scopes=[Scope(s) for s in scopes],
            rate_limit=rate_limit,
            rate_limit_burst=rate_limit_burst,
            expires_at=expires_at,
            hostnames=None if hostnames is None else list(hostnames),
            path_prefixes=None if path_prefixes is None else list(path_prefixes),
            max_bytes=max_bytes,
            max_files=max_files,
        )
        r = await self._send("POST", "/api_keys", json=body.model_dump(mode="json", exclude_none=True))
        return ApiKeyCreated.model_validate(r.json())

    async def list_keys(self) -> list[ApiKeyInfo]:
        return [ApiKeyInfo.model_validate(k) for k in (await self._send("GET", "/api_keys")).json()]

    async def revoke_key(self, key_id: str) -> None:
        await self._send("PUT", f"/api_keys/{key_id}/revoke")

    async def delete_key(self, key_id: str) -> None:
        await self._send("DELETE", f"/api_keys/{key_id}")

    # -- webhooks ------------------------------------------------------------------------
    async def create_webhook(
        self, url: str, events: Iterable[WebhookEvent | str] | None = None, *, description: str | None = None
    ) -> WebhookCreated:
        """Subscribe ``url``; the answer holds the signing secret, which is never shown again."""
        fields: dict[str, Any] = {"url": url, "description": description}
        if events is not None:
            fields["events"] = [WebhookEvent(e) for e in events]
        body = WebhookCreate.model_validate(fields)
        r = await self._send("POST", "/webhooks/subscriptions", json=body.model_dump(mode="json", exclude_none=True))
        return WebhookCreated.model_validate(r.json())

    async def list_webhooks(self) -> list[WebhookInfo]:
        return [WebhookInfo.model_validate(w) for w in (await self._send("GET", "/webhooks/subscriptions")).json()]

    async def delete_webhook(self, subscription_id: str) -> None:
        await self._send("DELETE", f"/webhooks/subscriptions/{subscription_id}")

    async def dead_letters(self, cursor: str | None = None, limit: int = 100) -> Page[DeadLetter]:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        r = await self._send("GET", "/webhooks/dead_letters", params=params)
        return Page[DeadLetter].model_validate(r.json())

    async def replay(self, delivery_id: str | None = None) -> int:
        """Queue one dead letter (or, with no id, every one) again; how many were."""
        url = "/webhooks/dead_letters/replay" if delivery_id is None else f"/webhooks/dead_letters/{delivery_id}/replay"
        return ReplayResponse.model_validate((await self._send("POST", url)).json()).replayed
