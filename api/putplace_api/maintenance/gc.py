"""``putplace-api gc``: collect content that no file record, current or historical, names.

Garbage, each kind only once older than the grace period (default 24h), so that an
upload in progress -- object committed, record not yet marked stored -- is never collected:

- *unreferenced*: a content record no file record names (its last change, first_seen_at or
  stored_at, older than the grace), and its object when the record said stored;
- *orphan*: an object (last modified before the grace) with no content record marked stored;
- *packs* (``putplace_api.storage.packs``, last modified before the grace): one that no stored
  record points into is deleted; one whose live contents fill less than ``REPACK_BELOW`` of it
  is repacked -- its live contents read, re-hashed and written to a new pack, each record
  switched to the new place only while it still points at the old one, and the old pack
  deleted only once no record points into it. An unreferenced packed content loses its record
  in the first pass; its bytes go with its pack.

Upload sessions (``putplace_api.sessions``) too: an expired session's chunks and record (as the
API's own periodic pass would), and session data in storage that no session record names
(a session whose record was lost) once older than the grace. A live session -- a record not
expired -- is never touched, whatever its age. Session bytes are not counted in the report's bytes.

Dry-run by default: it lists what it would delete and how many bytes; ``delete=True`` does it.

Racing a live server. An unreferenced content is collected in this order: delete its record
only if it is still as read (``delete_contents_if_unchanged``) -- from then on a put_file
naming it gets a fresh record and is told to upload; re-check the references -- one that
appeared meanwhile gets the record back (``restore_contents``; the object was never touched);
then, a few at a time, read the records again and delete the objects of those still without
one (an upload needs a record first). An orphan is re-checked (record still not stored,
object still old) immediately before its object is deleted.

Residual window, stated honestly: between that last read and the object's deletion (one
storage call, milliseconds), a put_file naming the content *and* its complete upload (for an
orphan: the upload alone) would have to land; the deletion then removes the freshly uploaded
object under a record that says stored. gc reads the records back after deleting and reports
any such content as ``lost`` (exit status 1; ``verify`` reports it as missing). Both backends
create a put_file's content records only after its file records are written (SQLite: one
transaction; MongoDB: in that order), so the re-check of references sees every put_file that
could have been answered "stored". Running gc when no client is writing, or with a grace far
beyond any upload's duration, keeps the window empty in practice.

Packs have no such window: an upload only ever points records at the pack it has just written
(younger than the grace), so nothing comes to point into an old pack but gc itself -- its own
``restore_contents``, which runs before the pack pass. A pack is read for its usage just before
it is deleted, and read again after: a record pointing into it then is reported ``lost`` (only
two gc runs at once could do that, and a deleting run holds the ``gc`` lease:
``putplace_api.maintenance.lease``). A reader that read a record just before
a repack switched it finds the old pack gone and follows the record (``putplace_api.reading``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from putplace_api.maintenance.common import Backends, Findings, Progress, batched, bounded, chunks
from putplace_api.maintenance.lease import exclusive
from putplace_api.sessions import expire_sessions
from putplace_api.storage.base import StoredObject
from putplace_api.storage.packs import put_pack
from putplace_api.store.base import ContentRow, LeaseStore, PackMove, SessionStore

__all__ = ["Collected", "GcOptions", "GcReport", "collect_garbage"]

DELETE_CONCURRENCY = 16
REPACK_BELOW = 0.5  # a pack whose live contents fill less than this share of it is repacked


@dataclass(frozen=True, slots=True)
class GcOptions:
    grace_seconds: float = 24 * 3600
    delete: bool = False
    batch: int = 1000


@dataclass(frozen=True, slots=True)
class Collected:
    sha256: str  # the content's; for a pack, its name (packs/<id>); for an upload session, its id
    size: int  # bytes of storage freed (0 for a record whose content was never stored)
    what: str  # "unreferenced content", "unreferenced record (never stored)", "orphan object"


@dataclass
class GcReport:
    dry_run: bool
    grace_seconds: float
    collected: Findings[Collected] = field(default_factory=Findings)
    kept: Findings[str] = field(default_factory=Findings)  # changed during the run: left alone
    lost: Findings[str] = field(default_factory=Findings)  # the residual race hit (see above)

    @property
    def ok(self) -> bool:
        return not self.lost

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "grace_seconds": self.grace_seconds,
            "collected": {
                "count": self.collected.count,
                "bytes": self.collected.bytes,
                "items": [{"sha256": c.sha256, "size": c.size, "what": c.what} for c in self.collected.items],
            },
            "kept": {"count": self.kept.count, "items": self.kept.items},
            "lost": {"count": self.lost.count, "items": self.lost.items},
        }

    def lines(self) -> list[str]:
        verb = "would delete" if self.dry_run else "deleted"
        out = [f"  {c.sha256} {c.size} bytes ({c.what})" for c in self.collected.items]
        out.append(f"{verb} {self.collected.count} contents, {self.collected.bytes} bytes")
        if self.kept:
            out.append(f"kept {self.kept.count} that were referenced or stored again during the run")
        for sha in self.lost.items:
            out.append(f"  {sha} LOST: uploaded again while being collected; upload it again")
        if self.lost:
            out.append(f"error: {self.lost.count} contents lost to a concurrent upload")
        if self.dry_run:
            out.append("dry run: nothing was deleted (use --delete)")
        return out


async def collect_garbage(backends: Backends, options: GcOptions, now: datetime | None = None) -> GcReport:
    """Collect (or, in a dry run, list) the garbage. A deleting run holds the ``gc`` lease
    (``maintenance.lease``: LeaseBusy while another runs, LeaseLost if it could not keep it)."""
    if not options.delete:
        return await _collect(backends, options, now, lambda: None)
    async with exclusive(cast(LeaseStore, backends.store), "gc") as lease:
        return await _collect(backends, options, now, lease.check)


async def _collect(backends: Backends, options: GcOptions, now: datetime | None, step: Callable[[], None]) -> GcReport:
    """``step()`` before each step: it raises to stop the run between two steps."""
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=options.grace_seconds)
    report = GcReport(dry_run=not options.delete, grace_seconds=options.grace_seconds)
    progress = Progress("gc")
    async for batch in backends.store.iter_contents(options.batch):
        step()
        await _unreferenced(backends, [r for r in batch if _last_change(r) < cutoff], options, report)
        progress.tick("%d collected so far", report.collected.count)
    async for objects in batched(backends.storage.list_objects(), options.batch):
        step()
        await _orphans(backends, [o for o in objects if o.sha256 and o.modified < cutoff], cutoff, options, report)
        old_packs = [o for o in objects if o.pack_id and o.modified < cutoff]
        await _packs(backends, old_packs, cutoff, options, report, step)
        progress.tick("%d collected so far", report.collected.count)
    step()
    await _sessions(backends, now or datetime.now(UTC), cutoff, options, report)
    return report


async def _sessions(backends: Backends, now: datetime, cutoff: datetime, options: GcOptions, report: GcReport) -> None:
    """Expired upload sessions, and session data no record names (older than the grace)."""
    store: SessionStore = backends.store  # type: ignore[assignment]  # both stores implement it
    if options.delete:
        expired = await expire_sessions(store, backends.storage, now)
    else:
        expired = [row.id for row in await store.expired_sessions(now, options.batch)]
    for session_id in expired:
        report.collected.add(Collected(session_id, 0, "expired upload session"))
    async for data in backends.storage.list_sessions():
        if data.modified >= cutoff or await store.get_session(data.session_id) is not None:
            continue  # young (perhaps being created: data first, then its record), or alive
        if options.delete:
            await backends.storage.abort_session(data.session_id, data.ref)
        report.collected.add(Collected(data.session_id, 0, "upload session data without a session"))


def _last_change(row: ContentRow) -> datetime:
    return max(row.first_seen_at, row.stored_at or row.first_seen_at)


def _collected(row: ContentRow) -> Collected:
    if row.stored and row.pack_id is not None:  # its bytes are counted with its pack
        return Collected(row.sha256, 0, "unreferenced content (packed: its pack is reclaimed)")
    if row.stored:
        return Collected(row.sha256, row.size, "unreferenced content")
    return Collected(row.sha256, 0, "unreferenced record (never stored)")


async def _unreferenced(backends: Backends, old: Sequence[ContentRow], options: GcOptions, report: GcReport) -> None:
    store, storage = backends.store, backends.storage
    named = await store.referenced([r.sha256 for r in old]) if old else set()
    candidates = [r for r in old if r.sha256 not in named]
    if not candidates:
        return
    if not options.delete:
        for found in map(_collected, candidates):
            report.collected.add(found, found.size)
        return
    deleted = await store.delete_contents_if_unchanged(candidates)
    gone = [r for r in candidates if r.sha256 in deleted]
    named_again = await store.referenced([r.sha256 for r in gone]) if gone else set()
    await store.restore_contents([r for r in gone if r.sha256 in named_again])
    for sha in sorted({r.sha256 for r in candidates} - deleted | named_again):
        report.kept.add(sha)
    collect = [r for r in gone if r.sha256 not in named_again]
    for row in collect:
        if not row.stored or row.pack_id is not None:
            report.collected.add(_collected(row))
    deleted_objects: list[str] = []

    async def delete_object(row: ContentRow) -> None:
        await storage.delete(row.sha256)
        deleted_objects.append(row.sha256)
        report.collected.add(_collected(row), row.size)

    # A few objects at a time, each chunk just after reading its records once more: a
    # put_file naming a content since its record's deletion recreated the record (and only
    # then may its upload start), so the object stays for that upload to overwrite.
    for chunk in chunks([r for r in collect if r.stored and r.pack_id is None], DELETE_CONCURRENCY):
        recreated = await store.contents([r.sha256 for r in chunk])
        for sha in recreated:
            report.kept.add(sha)
        await bounded([r for r in chunk if r.sha256 not in recreated], delete_object, DELETE_CONCURRENCY)
    await _find_lost(backends, deleted_objects, report)


async def _find_lost(backends: Backends, deleted: Sequence[str], report: GcReport) -> None:
    """Objects just deleted whose record now says stored: an upload raced the deletion."""
    if deleted:
        for sha, row in (await backends.store.contents(deleted)).items():
            if row.stored:
                report.lost.add(sha)


async def _orphans(
    backends: Backends, old: Sequence[StoredObject], cutoff: datetime, options: GcOptions, report: GcReport
) -> None:
    store, storage = backends.store, backends.storage
    listed = {o.sha256: o for o in old if o.sha256 is not None}
    rows = await store.contents(listed) if listed else {}
    orphans = [sha for sha in listed if not _is_stored(rows.get(sha))]
    if not options.delete:
        for sha in orphans:
            report.collected.add(Collected(sha, listed[sha].size, "orphan object"), listed[sha].size)
        return
    deleted: list[str] = []

    async def delete_object(sha: str) -> None:
        now = await storage.stat(sha)
        if now is None or now.modified >= cutoff:
            report.kept.add(sha)  # deleted, or written again, since it was listed
            return
        await storage.delete(sha)
        deleted.append(sha)
        report.collected.add(Collected(sha, now.size, "orphan object"), now.size)

    # As for unreferenced content: a few at a time, just after reading their records again.
    for chunk in chunks(orphans, DELETE_CONCURRENCY):
        stored_now = {sha for sha, row in (await store.contents(chunk)).items() if row.stored}
        for sha in stored_now:
            report.kept.add(sha)
        await bounded([sha for sha in chunk if sha not in stored_now], delete_object, DELETE_CONCURRENCY)
    await _find_lost(backends, deleted, report)


def _is_stored(row: ContentRow | None) -> bool:
    return row is not None and row.stored


async def _packs(
    backends: Backends,
    old: Sequence[StoredObject],
    cutoff: datetime,
    options: GcOptions,
    report: GcReport,
    step: Callable[[], None],
) -> None:
    if not old:
        return
    used = await backends.store.pack_usage([o.pack_id for o in old if o.pack_id])
    for o in old:
        assert o.pack_id is not None
        step()  # a repack reads and writes a whole pack: one step each
        usage = used.get(o.pack_id)
        if usage is None:
            if not options.delete:
                report.collected.add(Collected(o.name, o.size, "dead pack"), o.size)
            else:
                await _drop_pack(backends, o, cutoff, report, "dead pack", o.size)
        elif usage.bytes < o.size * REPACK_BELOW:
            if not options.delete:
                freed = o.size - usage.bytes
                report.collected.add(Collected(o.name, freed, f"pack to repack ({usage.contents} live)"), freed)
            else:
                await _repack(backends, o, cutoff, report)


async def _drop_pack(
    backends: Backends, pack: StoredObject, cutoff: datetime, report: GcReport, what: str, freed: int
) -> None:
    """Delete a pack nothing points into any more, reading that once more just before."""
    assert pack.pack_id is not None
    now = await backends.storage.stat_pack(pack.pack_id)
    if now is None or now.modified >= cutoff or await backends.store.pack_usage([pack.pack_id]):
        report.kept.add(pack.name)
        return
    await backends.storage.delete_pack(pack.pack_id)
    report.collected.add(Collected(pack.name, freed, what), freed)
    if await backends.store.pack_usage([pack.pack_id]):
        report.lost.add(pack.name)


async def _repack(backends: Backends, pack: StoredObject, cutoff: datetime, report: GcReport) -> None:
    """Copy a pack's live contents to a new pack, switch their records, then drop the old pack."""
    store, storage = backends.store, backends.storage
    assert pack.pack_id is not None
    rows = await store.packed_contents(pack.pack_id)
    whole = b"".join([c async for c in storage.read_pack(pack.pack_id, 0, pack.size)])
    live: list[tuple[ContentRow, bytes]] = []
    for row in rows:
        start = row.pack_offset or 0
        data = whole[start : start + row.size]
        if len(data) != row.size or hashlib.sha256(data).hexdigest() != row.sha256:
            report.kept.add(pack.name)  # damaged: left as it is for verify to report, never copied
            return
        live.append((row, data))
    placed = await put_pack(storage, [(row.sha256, data) for row, data in live])
    moves = [
        PackMove(
            row.sha256,
            pack.pack_id,
            row.pack_offset or 0,
            p.pack_id,
            p.offset,
            p.storage_path,
        )
        for (row, _), p in zip(live, placed, strict=True)
    ]
    await store.move_packed(moves)
    written = sum(p.size for p in placed)
    await _drop_pack(backends, pack, cutoff, report, f"repacked ({len(live)} live contents moved)", pack.size - written)
