"""S3 (AWS, MinIO, SeaweedFS) content storage through aioboto3: ``{prefix}{sha[:2]}/{sha}``,
packs under ``{prefix}packs/`` (each one PutObject: atomic and durable when it returns).

A write buffers one part (8 MiB) at a time: small content is a single PutObject, larger
content a multipart upload that only becomes an object on CompleteMultipartUpload, so a
crash or disconnect never exposes a partial object (abort removes the parts). Memory per
upload stays at one part, whatever the size. Upload sessions: ``s3_sessions.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from putplace_api.storage.base import SESSIONS_DIR, StoredObject, pack_name, pack_of_name, sha_of_name
from putplace_api.storage.s3_errors import code as _code
from putplace_api.storage.s3_errors import is_missing as _is_missing
from putplace_api.storage.s3_errors import unavailable as _unavailable
from putplace_api.storage.s3_sessions import S3Sessions

__all__ = ["S3Storage"]

PART_SIZE = 8 * 1024 * 1024
_BEYOND_END = {"416", "InvalidRange"}


class _S3Writer:
    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._done = False

    async def _flush_part(self) -> None:
        if self._upload_id is None:
            created = await self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        body = bytes(self._buffer)
        self._buffer.clear()
        part = await self._client.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=body
        )
        self._parts.append({"PartNumber": number, "ETag": part["ETag"]})

    async def write(self, chunk: bytes) -> None:
        self._buffer += chunk
        try:
            while len(self._buffer) >= PART_SIZE:
                await self._flush_part()
        except (BotoCoreError, ClientError) as exc:
            await self.abort()
            raise _unavailable(exc) from exc

    async def commit(self) -> None:
        try:
            if self._upload_id is None:
                await self._client.put_object(Bucket=self._bucket, Key=self._key, Body=bytes(self._buffer))
            else:
                if self._buffer:
                    await self._flush_part()
                await self._client.complete_multipart_upload(
                    Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
                )
            self._done = True
        except (BotoCoreError, ClientError) as exc:
            await self.abort()
            raise _unavailable(exc) from exc

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer.clear()
        if self._upload_id is not None:
            try:
                await self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)
            except (BotoCoreError, ClientError):
                pass  # an unfinished upload holds no visible object; bucket lifecycle rules reap it


class S3Storage(S3Sessions):
    kind = "s3"

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        addressing_style: Literal["auto", "path", "virtual"] = "path",
        timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"storage URL must look like s3://bucket/prefix, got {url!r}")
        self.bucket = parts.netloc
        prefix = parts.path.lstrip("/")
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self._session = aioboto3.Session(
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key, region_name=region
        )
        self._endpoint_url = endpoint_url
        self._config = AioConfig(
            s3={"addressing_style": addressing_style},
            connect_timeout=timeout,
            read_timeout=max(timeout, 60.0),
            retries={"max_attempts": 2, "mode": "standard"},
        )
        self._stack = AsyncExitStack()
        self._client: Any = None

    async def open(self) -> None:
        self._client = await self._stack.enter_async_context(
            self._session.client("s3", endpoint_url=self._endpoint_url, config=self._config)
        )

    async def close(self) -> None:
        await self._stack.aclose()

    async def ping(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable(exc) from exc

    def location(self, sha256: str) -> str:
        return f"s3://{self.bucket}/{self._key(sha256)}"

    async def size(self, sha256: str) -> int | None:
        found = await self.stat(sha256)
        return None if found is None else found.size

    async def exists(self, sha256: str) -> bool:
        return await self.size(sha256) is not None

    async def writer(self, sha256: str) -> _S3Writer:
        return _S3Writer(self._client, self.bucket, self._key(sha256))

    def read(self, sha256: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        return self._read(self._key(sha256), start, end)

    async def _read(self, key: str, start: int, end: int | None) -> AsyncIterator[bytes]:
        if end is not None and end <= start:
            return  # no bytes: a Range of none would be ignored and answered with the whole object
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            obj = await self._client.get_object(**kwargs)
        except ClientError as exc:
            if _is_missing(exc):
                raise FileNotFoundError(key) from exc
            if _code(exc) in _BEYOND_END:
                return  # a range past the end of a shorter object: no bytes (the caller sees the size)
            raise _unavailable(exc) from exc
        except BotoCoreError as exc:
            raise _unavailable(exc) from exc
        stream = obj["Body"]
        try:
            async for chunk in stream.iter_chunks(1024 * 1024):
                yield chunk
        except (BotoCoreError, aiohttp.ClientError) as exc:  # the server went away mid-body
            raise _unavailable(exc) from exc
        finally:
            stream.close()

    def _listed(self, key: str, size: int, modified: datetime) -> StoredObject:
        name = key[len(self.prefix) :]
        # HEAD answers whole seconds (an HTTP date), a listing milliseconds: keep what both say.
        modified = modified.astimezone(UTC).replace(microsecond=0)
        return StoredObject(
            name=name, size=size, modified=modified, sha256=sha_of_name(name), pack_id=pack_of_name(name)
        )

    async def list_objects(self) -> AsyncIterator[StoredObject]:
        # Multipart uploads in progress are not objects: they never show up here; nor do
        # sessions' staging keys (s3_sessions.py).
        sessions = f"{self.prefix}{SESSIONS_DIR}/"
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
            async for page in pages:
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith("/") and not obj["Key"].startswith(sessions):  # a "directory" marker
                        yield self._listed(obj["Key"], int(obj["Size"]), obj["LastModified"])
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable(exc) from exc

    async def stat(self, sha256: str) -> StoredObject | None:
        return await self._stat(self._key(sha256))

    async def _stat(self, key: str) -> StoredObject | None:
        try:
            head = await self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise _unavailable(exc) from exc
        except BotoCoreError as exc:
            raise _unavailable(exc) from exc
        return self._listed(key, int(head["ContentLength"]), head["LastModified"])

    async def delete(self, sha256: str) -> bool:
        return await self._delete(self._key(sha256))

    async def _delete(self, key: str) -> bool:
        existed = await self._stat(key) is not None
        try:
            await self._client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable(exc) from exc
        return existed

    # -- packs -----------------------------------------------------------------------------
    def pack_location(self, pack_id: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{pack_name(pack_id)}"

    async def write_pack(self, pack_id: str, data: bytes) -> None:
        try:
            await self._client.put_object(Bucket=self.bucket, Key=self.prefix + pack_name(pack_id), Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable(exc) from exc

    def read_pack(self, pack_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        return self._read(self.prefix + pack_name(pack_id), start, end)

    async def stat_pack(self, pack_id: str) -> StoredObject | None:
        return await self._stat(self.prefix + pack_name(pack_id))

    async def delete_pack(self, pack_id: str) -> bool:
        return await self._delete(self.prefix + pack_name(pack_id))
