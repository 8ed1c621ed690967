"""The end-of-test checks of the fault tests: nothing lost, nothing corrupt.

``assert_intact``: each intended (host, path) is catalogued with its sha256 and its content; each
stored content downloads and re-hashes to its sha256; storage holds exactly the stored contents
(plus perhaps earlier versions of changed files), each as one object under the name of its hash
or as a range of a pack (``packs/<id>``, the range its record's storage_path names) that
re-hashes to it, and no pack that no record points into.
``assert_claims_hold`` is its part that must hold at any moment, even right after a crash.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tests.processes import ApiProcess
from tests.servers.s3 import S3Server

__all__ = [
    "Key",
    "Objects",
    "assert_claims_hold",
    "assert_intact",
    "assert_no_error_logged",
    "bucket_objects",
    "converged",
    "local_objects",
    "sha",
    "tree_state",
]

Key = tuple[str, str]  # (hostname, filepath)
Objects = Callable[[], dict[str, bytes]]  # lists a storage: sha256 or "packs/<id>" -> bytes
_PACK = re.compile(r"^packs/[0-9a-f]{32}$")
_PACKED_PATH = re.compile(r"/(packs/[0-9a-f]{32})#bytes=(\d+)-(\d+)$")  # a packed content's storage_path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_no_error_logged(api: ApiProcess) -> None:
    """The API (or uvicorn) logged no error: a 500 answered to the agent (which retries it
    silently) or a record found to claim missing content would show here first. (aiohttp, under
    aiobotocore, may log an unretrieved "Cannot write to closing transport" of a request to an
    S3 server that went away: its own background task, not an answer of ours.)"""
    log = api.workdir / "api.log"
    errors = [line for line in log.read_text(errors="replace").splitlines() if _is_error(line)]
    assert not errors, f"{len(errors)} errors in {log}, e.g. {[e[:300] for e in errors[:2]]}"


def _is_error(line: str) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return "Traceback" in line
    return (
        isinstance(record, dict)
        and record.get("level") in ("ERROR", "CRITICAL")
        and str(record.get("logger", "")).startswith(("putplace", "uvicorn"))
    )


def tree_state(root: Path) -> dict[str, str]:
    """Every file under ``root``: path -> sha256 of what it holds now."""
    return {str(p): sha(p.read_bytes()) for p in root.rglob("*") if p.is_file()}


def converged(api: ApiProcess, node: str, expected: dict[str, str]) -> bool:
    """The node's catalogue is exactly ``expected`` (path -> sha256), every content stored."""
    records = api.records(node)
    return {r["filepath"]: r["sha256"] for r in records} == expected and all(r["has_file_content"] for r in records)


def local_objects(root: Path) -> dict[str, bytes]:
    """Every object of local content storage by name; each must sit at ``{sha[:2]}/{sha}`` or be a pack."""
    out: dict[str, bytes] = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if rel.parts[0] == ".tmp" or path.is_dir():
            continue
        if _PACK.match(rel.as_posix()):
            out[rel.as_posix()] = path.read_bytes()
            continue
        assert len(rel.parts) == 2 and rel.parts[0] == rel.name[:2], f"stray file in storage: {rel}"
        out[rel.name] = path.read_bytes()
    return out


def bucket_objects(s3: S3Server, bucket: str, prefix: str = "content/") -> dict[str, bytes]:
    """Every object under ``prefix`` of an S3 bucket by name; each must be ``{prefix}{sha[:2]}/{sha}``."""
    client = s3.client()
    out: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            name = item["Key"].rsplit("/", 1)[-1]
            if _PACK.match(item["Key"][len(prefix) :]):
                name = item["Key"][len(prefix) :]
            else:
                assert item["Key"] == f"{prefix}{name[:2]}/{name}", f"stray object in the bucket: {item['Key']}"
            assert name not in out, f"two objects for {name}"
            out[name] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return out


def assert_claims_hold(api: ApiProcess, list_objects: Objects) -> list[dict[str, Any]]:
    """No record claims content that is not there: every stored content downloads and re-hashes
    to its sha256 and has its object; no object holds bytes other than its name says. Returns
    the catalogue."""
    records = api.records()
    objects = list_objects()  # after the records: what they claim must already be there
    stored = {r["sha256"] for r in records if r["has_file_content"]}
    with api.http() as c:
        for digest in sorted(stored):
            r = c.get(f"/content/{digest}")
            assert r.status_code == 200, f"content {digest}: {r.status_code} {r.text}"
            assert sha(r.content) == digest, f"content {digest} downloads as other bytes"
    corrupt = sorted(name for name, data in objects.items() if not _PACK.match(name) and sha(data) != name)
    assert not corrupt, f"objects whose bytes do not match their name: {corrupt[:3]}"
    packed = _packed(records)
    for digest, (pack, start, end) in packed.items():
        assert pack in objects, f"content {digest}: its pack {pack} is missing"
        assert sha(objects[pack][start:end]) == digest, f"content {digest}: its range of {pack} is other bytes"
    missing = sorted(stored - objects.keys() - packed.keys())
    assert not missing, f"{len(missing)} contents marked stored have no object, e.g. {missing[:3]}"
    return records


def _packed(records: Iterable[dict[str, Any]]) -> dict[str, tuple[str, int, int]]:
    """Where each packed stored content lies: sha256 -> (pack, start, end)."""
    out = {}
    for r in records:
        found = _PACKED_PATH.search(r["storage_path"] or "") if r["has_file_content"] else None
        if found:
            out[r["sha256"]] = (found[1], int(found[2]), int(found[3]))
    return out


def assert_intact(
    api: ApiProcess, expected: dict[Key, str], list_objects: Objects, superseded: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Every expected record is there with its sha256 and its content; no claim is false
    (``assert_claims_hold``); storage holds exactly the stored contents, plus perhaps the
    ``superseded`` ones (earlier versions of files, which no current record names). Returns the
    catalogue."""
    records = assert_claims_hold(api, list_objects)
    objects = list_objects()  # the writers are done: storage and catalogue must agree
    found = {(r["hostname"], r["filepath"]): r for r in records}
    missing = sorted(k for k in expected if k not in found)
    assert not missing, f"{len(missing)} records lost, e.g. {missing[:3]}"
    wrong = {k: found[k]["sha256"] for k, digest in expected.items() if found[k]["sha256"] != digest}
    assert not wrong, f"{len(wrong)} records with the wrong sha256, e.g. {list(wrong.items())[:3]}"
    no_content = sorted(k for k in expected if not found[k]["has_file_content"])
    assert not no_content, f"{len(no_content)} records without content, e.g. {no_content[:3]}"
    claimed = {r["sha256"] for r in records if r["has_file_content"]} | {p for p, _, _ in _packed(records).values()}
    if superseded:  # a pack of earlier versions only cannot be told from one nothing points into
        claimed |= {name for name in objects if _PACK.match(name)}
    unclaimed = sorted(objects.keys() - claimed - set(superseded))
    assert not unclaimed, f"{len(unclaimed)} objects no record claims, e.g. {unclaimed[:3]}"
    return records
