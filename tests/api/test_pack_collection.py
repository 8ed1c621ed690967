"""``verify`` and ``gc`` over packs (``putplace_api.storage.packs``), on SQLite + local disk and
FerretDB + MinIO: dead packs deleted, mostly dead ones repacked, nothing a record points at
ever lost -- also when an upload or a put_file lands in the middle of a repack (the race made
deterministic by ``Interleaved``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest

from putplace_api.maintenance.common import Backends
from putplace_api.maintenance.gc import GcOptions, collect_garbage
from putplace_api.maintenance.verify import VerifyOptions, verify
from putplace_api.reading import first_bytes
from putplace_api.settings import Settings
from putplace_api.storage import open_storage
from putplace_api.storage.base import pack_name
from putplace_api.storage.local import LocalStorage
from putplace_api.storage.packs import put_pack
from putplace_api.store import MetadataStore, open_store
from putplace_api.store.base import ContentRow, StoredContent
from putplace_client.models import FileMetadata
from tests.api.conftest import make_settings, meta, s3_settings, sha
from tests.api.test_integrity import Interleaved

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]


@pytest.fixture(params=["sqlite+local", "mongodb+minio"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite+local":
        return make_settings(tmp_path)
    url = request.getfixturevalue("mongodb_url").rstrip("/") + f"/pp_{uuid.uuid4().hex[:12]}"
    return make_settings(
        tmp_path, database_url=url, **s3_settings(request.getfixturevalue("minio"), f"{uuid.uuid4().hex}/")
    )


@pytest.fixture
async def backends(settings: Settings) -> AsyncIterator[Backends]:
    store, storage = open_store(settings), open_storage(settings)
    await store.open()
    await storage.open()
    try:
        yield Backends(store, storage)
    finally:
        await storage.close()
        await store.close()


async def pack(backends: Backends, *contents: bytes) -> str:
    """Store contents as one pack, as a batch upload does; the pack id."""
    placed = await put_pack(backends.storage, [(sha(c), c) for c in contents])
    rows = [
        StoredContent(
            p.sha256,
            p.size,
            None,
            p.storage_path,
            None,
            p.pack_id,
            p.offset,
        )
        for p in placed
    ]
    await backends.store.mark_stored_many(rows, datetime.now(UTC))
    return placed[0].pack_id


async def name(backends: Backends, data: bytes) -> None:
    """A file record naming the content: it is referenced."""
    await backends.store.put_files(
        [FileMetadata.model_validate(meta(data, filepath=f"/p/{sha(data)}"))], datetime.now(UTC)
    )


async def read(backends: Backends, row: ContentRow) -> bytes:
    first, rest = await first_bytes(backends.store, backends.storage, row, 0, None, 1)
    return b"".join(first) + b"".join([c async for c in rest])


async def row_of(backends: Backends, data: bytes) -> ContentRow:
    row = await backends.store.get_content(sha(data))
    assert row is not None
    return row


async def test_gc_deletes_dead_packs_and_repacks_mostly_dead_ones(backends: Backends) -> None:
    live, big_dead = b"live in a mostly dead pack", os.urandom(5000)
    dead = [b"dead one", b"dead two"]
    kept_big, kept_small = os.urandom(4000), b"dead but small"
    for data in (live, kept_big):
        await name(backends, data)
    mostly_dead = await pack(backends, live, big_dead)
    all_dead = await pack(backends, *dead)
    mostly_live = await pack(backends, kept_big, kept_small)
    orphan = (await put_pack(backends.storage, [(sha(b"never recorded"), b"never recorded")]))[0].pack_id
    before = await row_of(backends, live)

    dry = await collect_garbage(backends, GcOptions())  # the default grace: everything is too young
    assert dry.collected.count == 0
    # A dry run judges packs by the records as they are (none deleted first): only the orphan is dead.
    dry = await collect_garbage(backends, GcOptions(grace_seconds=0))
    assert {(c.sha256, c.what) for c in dry.collected.items if c.sha256.startswith("packs/")} == {
        (pack_name(orphan), "dead pack")
    }
    assert await backends.storage.stat_pack(orphan) is not None
    report = await collect_garbage(backends, GcOptions(grace_seconds=0, delete=True))

    assert report.ok and not report.lost and not report.kept
    packs = {(c.sha256, c.what) for c in report.collected.items if c.sha256.startswith("packs/")}
    assert packs == {
        (pack_name(mostly_dead), "repacked (1 live contents moved)"),
        (pack_name(all_dead), "dead pack"),
        (pack_name(orphan), "dead pack"),
    }
    unreferenced = {c.sha256 for c in report.collected.items if not c.sha256.startswith("packs/")}
    assert unreferenced == {sha(d) for d in (big_dead, *dead, kept_small)}
    for gone in (mostly_dead, all_dead, orphan):
        assert await backends.storage.stat_pack(gone) is None
    assert await backends.storage.stat_pack(mostly_live) is not None  # over half of it is live: left alone

    after = await row_of(backends, live)
    assert after.pack_id not in (None, mostly_dead) and after.stored_at == before.stored_at
    assert await read(backends, after) == live
    assert await read(backends, before) == live  # a reader holding the old record follows it
    assert await read(backends, await row_of(backends, kept_big)) == kept_big
    checked = await verify(backends, VerifyOptions())
    assert checked.ok and checked.checked == 2 and checked.orphans.count == 0 and checked.foreign.count == 0


async def test_uploads_and_put_files_during_a_repack_lose_nothing(backends: Backends) -> None:
    """During the repack of a mostly dead pack: a content of it is uploaded again (into a new
    pack) just before gc switches the records, and a put_file names a dead content of it just
    before gc deletes the unreferenced records. Both stay readable; the old pack goes only
    once nothing points into it."""
    moved, uploaded_again, named_late = b"moved by gc", b"uploaded again meanwhile", os.urandom(3000)
    filler = os.urandom(20_000)
    for data in (moved, uploaded_again):
        await name(backends, data)
    old = await pack(backends, moved, uploaded_again, named_late, filler)

    async def upload_again() -> None:
        await pack(backends, uploaded_again)

    async def put_file_naming() -> None:
        await name(backends, named_late)

    racing = Interleaved(
        backends.store,
        {("delete_contents_if_unchanged", 1): put_file_naming, ("move_packed", 1): upload_again},
    )
    report = await collect_garbage(Backends(cast(MetadataStore, racing), backends.storage), GcOptions(0, delete=True))

    assert report.ok and not report.lost
    assert {c.sha256 for c in report.collected.items} == {sha(filler), pack_name(old)}
    assert await backends.storage.stat_pack(old) is None
    for data in (moved, uploaded_again, named_late):
        row = await row_of(backends, data)
        assert row.stored and row.pack_id not in (None, old) and await read(backends, row) == data
    assert (await row_of(backends, moved)).pack_id != (await row_of(backends, uploaded_again)).pack_id
    assert (await verify(backends, VerifyOptions())).ok


async def test_verify_finds_damaged_and_missing_packs_and_gc_never_copies_damage(backends: Backends) -> None:
    good, damaged, lost = b"good content", b"to be damaged", b"in a lost pack"
    for data in (good, damaged, lost):
        await name(backends, data)
    await pack(backends, good)
    bad = await pack(backends, damaged, os.urandom(5000))  # mostly dead once the filler is collected
    gone = await pack(backends, lost)
    orphan = (await put_pack(backends.storage, [(sha(b"nobody"), b"nobody")]))[0].pack_id
    await _overwrite_pack(backends, bad, b"TO BE DAMAGED")
    await backends.storage.delete_pack(gone)

    report = await verify(backends, VerifyOptions())
    assert not report.ok
    assert [(p.sha256, p.reason.split(" ")[0]) for p in report.corrupt.items] == [(sha(damaged), "bytes")]
    assert [(p.sha256, p.reason) for p in report.missing.items] == [(sha(lost), f"pack {pack_name(gone)} missing")]
    assert set(report.orphans.items) == {pack_name(orphan)}

    collected = await collect_garbage(backends, GcOptions(0, delete=True))
    assert pack_name(bad) in collected.kept.items  # damaged bytes are never copied, the pack stays
    assert await backends.storage.stat_pack(bad) is not None


async def _overwrite_pack(backends: Backends, pack_id: str, head: bytes) -> None:
    """Other bytes at the start of a pack, written behind the storage's back."""
    storage = backends.storage
    whole = b"".join([c async for c in storage.read_pack(pack_id, 0, 1 << 30)])
    if isinstance(storage, LocalStorage):
        (storage.root / pack_name(pack_id)).write_bytes(head + whole[len(head) :])
    else:
        await storage.write_pack(pack_id, head + whole[len(head) :])
