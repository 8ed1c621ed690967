"""``putplace-api verify``: re-hash stored content and cross-check metadata and storage.

Three read-only passes, each in batches so memory stays bounded whatever the size:

1. every content record marked stored (or a sample): its object (or its range of a pack)
   exists, has the recorded size and re-hashes to its sha256 -- else ``missing`` or ``corrupt``
   (errors);
2. every sha256 a current or historical file record names: a content record exists (else
   ``dangling``, an error); one not uploaded yet is ``pending`` (information: normal);
3. every object in storage: a stored content record exists, or for a pack one points into it
   (else ``orphan``, a warning that gc collects); names that are neither a sha256 nor a pack of
   ours are ``foreign`` (a warning, never collected).

Safe beside a live server: a content is re-hashed only once its record says stored, which
uploads set after the object is committed, and storage shows nothing before commit.
Run beside ``gc --delete``, content it collects meanwhile may show as missing.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, cast

import anyio.to_thread

from putplace_api.maintenance.common import Backends, Findings, Progress, batched, bounded
from putplace_api.reading import first_bytes
from putplace_api.storage.base import pack_name
from putplace_api.store.base import ContentRow, WebhookStore
from putplace_api.webhooks.events import corruption_found

__all__ = ["Problem", "VerifyOptions", "VerifyReport", "verify"]

_HASH_INLINE = 64 * 1024  # smaller chunks are hashed on the loop: a thread hop costs more


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    sample: int | None = None  # re-hash this many stored contents, chosen at random
    sample_fraction: float | None = None  # or each stored content with this probability
    concurrency: int = 4  # contents read and hashed side by side
    batch: int = 1000  # records per database round trip


@dataclass(frozen=True, slots=True)
class Problem:
    sha256: str
    reason: str


@dataclass
class VerifyReport:
    records: int = 0  # content records seen
    checked: int = 0  # stored contents re-hashed
    checked_bytes: int = 0
    corrupt: Findings[Problem] = field(default_factory=Findings)
    missing: Findings[Problem] = field(default_factory=Findings)
    dangling: Findings[str] = field(default_factory=Findings)
    pending: Findings[str] = field(default_factory=Findings)
    orphans: Findings[str] = field(default_factory=Findings)
    foreign: Findings[str] = field(default_factory=Findings)

    @property
    def ok(self) -> bool:
        """No error: warnings (orphan, foreign) and information (pending) do not count."""
        return not (self.corrupt or self.missing or self.dangling)

    def as_dict(self) -> dict[str, Any]:
        def kind(findings: Findings[Any], severity: str) -> dict[str, Any]:
            items = [{"sha256": i.sha256, "reason": i.reason} if isinstance(i, Problem) else i for i in findings.items]
            return {"severity": severity, "count": findings.count, "bytes": findings.bytes, "items": items}

        return {
            "ok": self.ok,
            "records": self.records,
            "checked": self.checked,
            "checked_bytes": self.checked_bytes,
            "corrupt": kind(self.corrupt, "error"),
            "missing": kind(self.missing, "error"),
            "dangling": kind(self.dangling, "error"),
            "orphan": kind(self.orphans, "warning"),
            "foreign": kind(self.foreign, "warning"),
            "pending": kind(self.pending, "info"),
        }

    def lines(self) -> list[str]:
        out = [f"re-hashed {self.checked} stored contents ({self.checked_bytes} bytes) of {self.records} records"]
        described = (
            ("corrupt", self.corrupt, "error: content does not match its sha256"),
            ("missing", self.missing, "error: marked stored, object gone"),
            ("dangling", self.dangling, "error: named by file records, no content record"),
            ("orphan", self.orphans, "warning: object without a stored record; gc collects it"),
            ("foreign", self.foreign, "warning: not a content object name"),
            ("pending", self.pending, "info: announced, not uploaded yet"),
        )
        for name, findings, meaning in described:
            out.append(f"{name}: {findings.count} ({meaning})")
            if name != "pending":
                out += [f"  {i.sha256} {i.reason}" if isinstance(i, Problem) else f"  {i}" for i in findings.items]
        out.append("result: OK" if self.ok else "result: PROBLEMS FOUND")
        return out


async def verify(backends: Backends, options: VerifyOptions) -> VerifyReport:
    report = VerifyReport()
    await _check_contents(backends, options, report)
    await _check_references(backends, options, report)
    await _check_objects(backends, options, report)
    await corruption_found(
        cast(WebhookStore, backends.store),
        ((p.sha256, p.reason) for p in (*report.corrupt.items, *report.missing.items)),
    )
    return report


async def _check_contents(backends: Backends, options: VerifyOptions, report: VerifyReport) -> None:
    progress = Progress("verify")
    rng = random.Random()
    reservoir: list[ContentRow] = []
    stored_seen = 0

    async def check(row: ContentRow) -> None:
        await _check_one(backends, row, report)
        progress.tick("%d records read, %d contents re-hashed", report.records, report.checked)

    async for batch in backends.store.iter_contents(options.batch):
        report.records += len(batch)
        stored = [r for r in batch if r.stored]
        if options.sample is not None:  # reservoir sampling: a uniform sample in one pass
            for row in stored:
                stored_seen += 1
                if len(reservoir) < options.sample:
                    reservoir.append(row)
                elif (slot := rng.randrange(stored_seen)) < options.sample:
                    reservoir[slot] = row
            continue
        if options.sample_fraction is not None:
            stored = [r for r in stored if rng.random() < options.sample_fraction]
        await bounded(stored, check, options.concurrency)
    await bounded(reservoir, check, options.concurrency)


async def _check_one(backends: Backends, row: ContentRow, report: VerifyReport) -> None:
    digest = hashlib.sha256()
    size = 0
    try:
        # A pack repacked by gc meanwhile is followed to the content's new place.
        first, rest = await first_bytes(backends.store, backends.storage, row, 0, None, 1)
        for chunk in first:
            size += len(chunk)
            digest.update(chunk)
        async for chunk in rest:
            size += len(chunk)
            if len(chunk) < _HASH_INLINE:
                digest.update(chunk)
            else:
                await anyio.to_thread.run_sync(digest.update, chunk)
    except FileNotFoundError:
        where = "object missing" if row.pack_id is None else f"pack {pack_name(row.pack_id)} missing"
        report.missing.add(Problem(row.sha256, where), row.size)
        return
    report.checked += 1
    report.checked_bytes += size
    if size != row.size:
        report.corrupt.add(Problem(row.sha256, f"size {size}, recorded {row.size}"), size)
    elif digest.hexdigest() != row.sha256:
        report.corrupt.add(Problem(row.sha256, f"bytes hash to {digest.hexdigest()}"), size)


async def _check_references(backends: Backends, options: VerifyOptions, report: VerifyReport) -> None:
    async for shas in backends.store.iter_referenced(options.batch):
        rows = await backends.store.contents(shas)
        for sha in shas:
            row = rows.get(sha)
            if row is None:
                report.dangling.add(sha)
            elif not row.stored:
                report.pending.add(sha)


async def _check_objects(backends: Backends, options: VerifyOptions, report: VerifyReport) -> None:
    async for objects in batched(backends.storage.list_objects(), options.batch):
        ours = {o.sha256: o for o in objects if o.sha256 is not None}
        packs = {o.pack_id: o for o in objects if o.pack_id is not None}
        for o in objects:
            if o.sha256 is None and o.pack_id is None:
                report.foreign.add(o.name, o.size)
        rows = await backends.store.contents(ours)
        for sha, o in ours.items():
            row = rows.get(sha)
            if row is None or not row.stored:
                report.orphans.add(sha, o.size)
        used = await backends.store.pack_usage(packs) if packs else {}
        for pack_id, o in packs.items():
            if pack_id not in used:
                report.orphans.add(o.name, o.size)
