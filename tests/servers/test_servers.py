"""Smoke tests of the real test servers: each fixture yields a server that really works."""

from __future__ import annotations

import uuid
from typing import Any

import pymongo
import pytest
from botocore.exceptions import ClientError
from pymongo.errors import DuplicateKeyError

from tests.servers import INSTALLABLE, S3Server, ferretdb, select
from tests.servers.base import workdir


def test_ferretdb_insert_find_unique_index(mongodb_url: str) -> None:
    check_unique_index(mongodb_url)


def test_ferretdb_on_postgresql_works_and_stops_with_its_database() -> None:
    with workdir("ferretdb") as data:
        server = ferretdb.start(data, backend="postgresql")
        try:
            check_unique_index(server.env[ferretdb.ENV_URL])
            assert [p.name for p in server.backing] == ["postgres"]
        finally:
            server.stop()
        assert not server.process.alive() and not server.backing[0].alive()


def check_unique_index(mongodb_url: str) -> None:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongodb_url, serverSelectionTimeoutMS=5000)
    try:
        db = client[f"smoke_{uuid.uuid4().hex[:8]}"]
        files = db["files"]
        files.create_index([("sha256", pymongo.ASCENDING)], unique=True)
        files.insert_one({"sha256": "aa", "size": 1})
        files.insert_one({"sha256": "bb", "size": 2})
        assert files.find_one({"sha256": "bb"}, {"_id": 0}) == {"sha256": "bb", "size": 2}
        assert [d["sha256"] for d in files.find({}, sort=[("size", -1)])] == ["bb", "aa"]
        with pytest.raises(DuplicateKeyError):
            files.insert_one({"sha256": "aa", "size": 3})
        assert files.count_documents({}) == 2
        client.drop_database(db.name)
    finally:
        client.close()


@pytest.fixture(params=["seaweedfs", "minio"])
def s3(request: pytest.FixtureRequest) -> S3Server:
    server: S3Server = request.getfixturevalue(request.param)
    return server


def test_s3_object_round_trip(s3: S3Server) -> None:
    client = s3.client()
    bucket = s3.create_bucket("smoke")
    assert bucket in {b["Name"] for b in client.list_buckets()["Buckets"]}
    client.put_object(Bucket=bucket, Key="dir/a.txt", Body=b"hello", ContentType="text/plain")
    got = client.get_object(Bucket=bucket, Key="dir/a.txt")
    assert got["Body"].read() == b"hello"
    head = client.head_object(Bucket=bucket, Key="dir/a.txt")
    assert head["ContentLength"] == 5
    assert head["ContentType"] == "text/plain"
    client.delete_object(Bucket=bucket, Key="dir/a.txt")
    with pytest.raises(ClientError) as missing:
        client.head_object(Bucket=bucket, Key="dir/a.txt")
    assert missing.value.response["Error"]["Code"] in {"404", "NoSuchKey"}


def test_s3_missing_key_raises(s3: S3Server) -> None:
    client = s3.client()
    bucket = s3.create_bucket("smoke")
    with pytest.raises(ClientError) as missing:
        client.get_object(Bucket=bucket, Key="nothing-here")
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"


def test_s3_missing_bucket_raises(s3: S3Server) -> None:
    with pytest.raises(ClientError) as missing:
        s3.client().put_object(Bucket=f"absent-{uuid.uuid4().hex[:12]}", Key="k", Body=b"x")
    assert missing.value.response["Error"]["Code"] == "NoSuchBucket"


def test_s3_multipart_upload(s3: S3Server) -> None:
    client = s3.client()
    bucket = s3.create_bucket("smoke")
    part1 = b"a" * (5 * 1024 * 1024)  # every part but the last must be >= 5 MiB
    part2 = b"b" * 1024
    upload = client.create_multipart_upload(Bucket=bucket, Key="big.bin")
    parts = []
    for number, body in enumerate([part1, part2], start=1):
        etag = client.upload_part(
            Bucket=bucket,
            Key="big.bin",
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=body,
        )["ETag"]
        parts.append({"ETag": etag, "PartNumber": number})
    done = client.complete_multipart_upload(
        Bucket=bucket,
        Key="big.bin",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": parts},
    )
    assert done["ETag"].strip('"').endswith("-2")
    assert client.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == part1 + part2


def test_a_bare_install_leaves_out_the_tools_only_a_benchmark_runs() -> None:
    everything = select([], INSTALLABLE)
    assert "skaffold" in everything
    assert "restic" not in everything
    assert select(["restic"], INSTALLABLE) == ["restic"]
