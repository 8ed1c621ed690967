"""Upload sessions on S3: one multipart upload per session, of ``{prefix}.sessions/{id}``.

Chunk n is part n+1 (so chunks are >= 5 MiB but the last, S3's rule); the parts S3 lists
(ListParts) are the chunks held, so a restart of the API loses nothing. ``assemble`` completes
the upload into that *staging* key -- never a content's name -- and hashes it by reading it
back; ``commit`` then copies it to the content's key (CopyObject up to 5 GiB, a multipart copy
beyond, CopyObject's limit) and deletes the staging key. A chunk's body is held in memory
while its part is sent (S3 needs its length and checksum first): a chunk size at a time.

``S3Storage`` mixes this in; ``{prefix}.sessions/`` is outside what ``list_objects`` lists.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
from botocore.exceptions import BotoCoreError, ClientError

from putplace_api.storage.base import SESSIONS_DIR, SessionData, object_name
from putplace_api.storage.s3_errors import is_missing as _gone
from putplace_api.storage.s3_errors import unavailable as _unavailable

__all__ = ["S3Sessions", "COPY_LIMIT"]

COPY_LIMIT = 5 * 1024**3  # CopyObject's largest source
COPY_PART = 512 * 1024**2  # bytes per UploadPartCopy beyond it (10,000 parts: 5 TiB)


@contextmanager
def _translated(session_id: str | None = None) -> Iterator[None]:
    """S3's errors as storage's: a session gone (FileNotFoundError, when ``session_id`` is given)
    or storage unavailable."""
    try:
        yield
    except ClientError as exc:
        if session_id is not None and _gone(exc):
            raise FileNotFoundError(session_id) from exc
        raise _unavailable(exc) from exc
    except BotoCoreError as exc:
        raise _unavailable(exc) from exc


class _Assembled:
    def __init__(self, owner: S3Sessions, staging: str) -> None:
        self._owner = owner
        self._staging = staging
        self._done = False
        self.sha256 = ""
        self.size = 0
        self.head = b""

    async def hash(self, head_bytes: int) -> None:
        digest = hashlib.sha256()
        client = self._owner._client
        try:
            obj = await client.get_object(Bucket=self._owner.bucket, Key=self._staging)
            stream = obj["Body"]
            try:
                async for block in stream.iter_chunks(1024 * 1024):
                    if len(self.head) < head_bytes:
                        self.head += block[: head_bytes - len(self.head)]
                    await anyio.to_thread.run_sync(digest.update, block)
                    self.size += len(block)
            finally:
                stream.close()
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable(exc) from exc
        self.sha256 = digest.hexdigest()

    async def commit(self) -> None:
        client, bucket = self._owner._client, self._owner.bucket
        final = self._owner._key(self.sha256)
        source = {"Bucket": bucket, "Key": self._staging}
        with _translated():
            if self.size <= COPY_LIMIT:
                await client.copy_object(Bucket=bucket, Key=final, CopySource=source)
            else:
                await self._multipart_copy(final, source)
            await client.delete_object(Bucket=bucket, Key=self._staging)
        self._done = True

    async def _multipart_copy(self, final: str, source: dict[str, str]) -> None:
        client, bucket = self._owner._client, self._owner.bucket
        part = max(COPY_PART, -(-self.size // 10_000))
        upload = (await client.create_multipart_upload(Bucket=bucket, Key=final))["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, self.size, part), 1):
                end = min(self.size, start + part) - 1
                copied = await client.upload_part_copy(
                    Bucket=bucket,
                    Key=final,
                    UploadId=upload,
                    PartNumber=number,
                    CopySource=source,
                    CopySourceRange=f"bytes={start}-{end}",
                )
                parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
            await client.complete_multipart_upload(
                Bucket=bucket, Key=final, UploadId=upload, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            await client.abort_multipart_upload(Bucket=bucket, Key=final, UploadId=upload)
            raise

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        with _translated():
            await self._owner._client.delete_object(Bucket=self._owner.bucket, Key=self._staging)


class S3Sessions:
    _client: Any
    bucket: str
    prefix: str

    def _key(self, sha256: str) -> str:
        return self.prefix + object_name(sha256)

    def _staging(self, session_id: str) -> str:
        return f"{self.prefix}{SESSIONS_DIR}/{session_id}"

    async def begin_session(self, session_id: str, size: int) -> str:
        with _translated():
            created = await self._client.create_multipart_upload(Bucket=self.bucket, Key=self._staging(session_id))
        return str(created["UploadId"])

    async def _parts(self, session_id: str, ref: str) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        with _translated(session_id):
            pages = self._client.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=self._staging(session_id), UploadId=ref
            )
            async for page in pages:
                parts += page.get("Parts", [])
        return parts

    async def held_chunks(self, session_id: str, ref: str) -> set[int]:
        return {int(p["PartNumber"]) - 1 for p in await self._parts(session_id, ref)}

    async def write_chunk(
        self, session_id: str, ref: str, number: int, offset: int, body: AsyncIterator[bytes]
    ) -> None:
        data = bytearray()
        async for piece in body:
            data += piece
        with _translated(session_id):
            await self._client.upload_part(
                Bucket=self.bucket, Key=self._staging(session_id), UploadId=ref, PartNumber=number + 1, Body=bytes(data)
            )

    async def assemble(self, session_id: str, ref: str, chunks: int, head_bytes: int) -> _Assembled:
        staging = self._staging(session_id)
        try:
            parts = await self._parts(session_id, ref)
        except FileNotFoundError:
            # Completed into the staging key by an earlier call that did not get to commit (the
            # API was stopped): the bytes are there, hash them again.
            with _translated(session_id):
                await self._client.head_object(Bucket=self.bucket, Key=staging)
        else:
            listed = sorted((int(p["PartNumber"]), p["ETag"]) for p in parts if int(p["PartNumber"]) <= chunks)
            with _translated():
                await self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=staging,
                    UploadId=ref,
                    MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in listed]},
                )
        assembled = _Assembled(self, staging)
        await assembled.hash(head_bytes)
        return assembled

    async def abort_session(self, session_id: str, ref: str) -> None:
        staging = self._staging(session_id)
        try:
            if ref:
                try:
                    await self._client.abort_multipart_upload(Bucket=self.bucket, Key=staging, UploadId=ref)
                except ClientError as exc:
                    if not _gone(exc):
                        raise
            await self._client.delete_object(Bucket=self.bucket, Key=staging)  # a half-completed one
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable(exc) from exc

    async def list_sessions(self) -> AsyncIterator[SessionData]:
        root = f"{self.prefix}{SESSIONS_DIR}/"
        try:
            # Listed without a prefix, filtered here: MinIO lists the uploads of a prefix only when
            # it is a whole key (minio/minio#20989).
            uploads = self._client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket)
            async for page in uploads:
                for upload in page.get("Uploads", []):
                    if not upload["Key"].startswith(root):
                        continue
                    started = upload["Initiated"].astimezone(UTC)
                    yield SessionData(upload["Key"][len(root) :], upload["UploadId"], started)
            objects = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root)
            async for page in objects:
                for obj in page.get("Contents", []):
                    modified: datetime = obj["LastModified"].astimezone(UTC)
                    yield SessionData(obj["Key"][len(root) :], "", modified)
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable(exc) from exc
