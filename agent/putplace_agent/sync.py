"""The agent's pipeline: find changes, hash them, announce them in batches, upload what the
server asks for, delete what is gone -- and keep every step's debt in the index.

    scans / watch events --> hash (thread pool) --> announce (POST /put_files, batched)
                                                      |--> bundle small contents (POST /upload_files)
                                                      |--> upload large ones (bounded concurrency, streamed;
                                                      |    above a threshold in resumable chunks: sessions.py)
    gone from disk ------------------------------------> delete (DELETE /files)

Stages talk through in-memory queues; the index is the truth. A path leaves a state only when
the server acknowledged it, so a crash, an outage or a SIGTERM at any point loses nothing: the
next start re-sends whatever the index still owes. Producers (scans) slow down when too much
work is in flight, which bounds memory whatever the size of the tree.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from putplace_agent import metrics
from putplace_agent.hasher import BLOCK, FileChanged, NotCatalogued, hash_file
from putplace_agent.index import Entry, Index, State
from putplace_agent.metrics import Tally
from putplace_agent.retry import call_with_retry, is_transient
from putplace_agent.scanner import Excluder, compare, is_catalogued, pseudo_mounts, scan, signature_of
from putplace_agent.sessions import upload_in_session
from putplace_agent.settings import AgentSettings
from putplace_agent.watcher import watch_tree
from putplace_client import (
    AuthenticationError,
    CertificateError,
    ContentChanged,
    FileMetadata,
    NotFoundError,
    PermissionDenied,
    PutPlaceClient,
    PutPlaceClientError,
    StatusError,
    UploadStatus,
)
from putplace_client.models import escape_path

__all__ = ["Agent", "Fatal", "shown"]

log = logging.getLogger(__name__)

MAX_OUTSTANDING = 20_000  # files in flight between a scan and the server: bounds memory
HASH_BATCH_FILES = 64  # small files hashed per thread hand-off
HASH_BATCH_BYTES = 4 * BLOCK
ANNOUNCERS = 2
DELETERS = 4
BUNDLERS = 2
BUNDLE_FILE_BYTES = 256 * 1024  # contents up to this size travel many to a request (POST /upload_files)
BUNDLE_FILES = 1000
BUNDLE_BYTES = 8 * 1024 * 1024  # well under the server's default request cap (32 MiB)
PENDING_RETRY_SECONDS = 30.0
CHANGING_RETRY_SECONDS = (1.0, 5.0, 30.0)
REHASH_SECONDS = 1.0  # a file that keeps changing is looked at again later


def shown(path: str) -> str:
    """A path as a log line shows it: a byte that is not UTF-8 as ``\\xNN`` (for reading: the
    catalogue's escaped form also doubles backslashes), and with control characters escaped, so
    a name holding a newline cannot split a text log line or forge another."""
    text = escape_path(path)
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Fatal(Exception):
    """The agent cannot go on: the server refuses its key."""


class _Stale(Exception):
    """The file changed after it was hashed: hash it again rather than upload it."""


class Agent:
    def __init__(self, settings: AgentSettings, client: PutPlaceClient, index: Index) -> None:
        self.settings = settings
        self.client = client
        self.index = index
        self.tally = Tally()
        self.roots = [os.path.abspath(p) for p in settings.paths]
        self.excluded = Excluder(settings.exclude)
        self.skip = pseudo_mounts() | frozenset(os.path.abspath(p) for p in (settings.state_dir, *settings.skip))
        self.scanning = False
        self._hash_q: asyncio.Queue[list[bytes]] = asyncio.Queue()
        self._announce_q: asyncio.Queue[Entry] = asyncio.Queue()
        self._upload_q: asyncio.Queue[Entry] = asyncio.Queue()
        self._bundle_q: asyncio.Queue[Entry] = asyncio.Queue()
        self._delete_q: asyncio.Queue[bytes] = asyncio.Queue()
        self._pool = ThreadPoolExecutor(settings.hash_workers, thread_name_prefix="putplace-hash")
        self._outstanding = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._room = asyncio.Event()
        self._room.set()
        self._announcing: set[bytes] = set()
        self._deleting: set[bytes] = set()
        self._event_time: dict[bytes, float] = {}
        self._changing: dict[bytes, int] = {}
        self._once = False
        self._queued_at: dict[bytes, float] = {}  # when a watch event last queued the path for hashing
        self._deferred: set[bytes] = set()
        self._timers = 0  # owed looks waiting on a timer (counted in _outstanding too)
        self._reported: set[str] = set()
        # One upload per content: other paths with the same sha wait for it (a batch often has copies).
        self._content: dict[str, asyncio.Future[bool]] = {}
        for name, queue in (
            ("hash", self._hash_q),
            ("announce", self._announce_q),
            ("upload", self._upload_q),
            ("bundle", self._bundle_q),
            ("delete", self._delete_q),
        ):
            metrics.QUEUE_DEPTH.labels(name).set_function(queue.qsize)

    # -- running ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, *, once: bool) -> None:
        """Sync until done (``once``) or until ``stop`` is set, then drain for a while."""
        self._once = once
        try:
            async with asyncio.TaskGroup() as group:
                announce = partial(self._gather, self._announce_q, self.settings.batch_size)
                bundle = partial(self._gather, self._bundle_q, BUNDLE_FILES, BUNDLE_BYTES)
                stages: list[tuple[int, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]]] = [
                    (self.settings.hash_workers, self._hash_q.get, self._hash_batch),
                    (ANNOUNCERS, announce, self._announce),
                    (self.settings.upload_concurrency, self._upload_q.get, self._upload),
                    (BUNDLERS, bundle, self._upload_bundle),
                    (DELETERS, self._delete_q.get, self._delete),
                ]
                workers = [group.create_task(self._work(take, handle)) for n, take, handle in stages for _ in range(n)]
                await self._produce(stop, once=once)
                await self._drain(once=once)
                for task in workers:
                    task.cancel()
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _produce(self, stop: asyncio.Event, *, once: bool) -> None:
        self.resume_pending()
        if once:
            await self.scan_all()
            await self._idle.wait()
            return
        async with asyncio.TaskGroup() as producers:
            for root in self.roots:
                producers.create_task(
                    watch_tree(root, self.on_changes, stop, on_lost=partial(self.scan_tree, root, full=True))
                )
            await self.scan_all()
            producers.create_task(self._every(self.settings.rescan_interval_seconds, self.scan_all, stop))
            producers.create_task(self._every(PENDING_RETRY_SECONDS, self._retry_pending, stop))
            await stop.wait()

    async def _drain(self, *, once: bool) -> None:
        if once or self._idle.is_set():
            return
        log.info("stopping: letting in-flight work finish for up to %.0f s", self.settings.drain_seconds)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_seconds
        # Looks scheduled for later (a file that kept changing) are not in flight: no waiting for them.
        while self._outstanding > self._timers and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._outstanding:
            log.info("stopping with work still pending; it stays in the index for the next start")

    @staticmethod
    async def _every(period: float, job: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
        if period <= 0:
            return
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), period)
            except TimeoutError:
                await job()

    async def _retry_pending(self) -> None:
        if self._idle.is_set():  # only when nothing is in flight, so nothing is sent twice
            self.resume_pending()

    def resume_pending(self) -> None:
        """Queue what the index still owes the server (after a restart, an outage, a failure)."""
        for entry in self.index.pending(State.ANNOUNCE):
            self._begin(1)
            self._announce_q.put_nowait(entry)
        for entry in self.index.pending(State.UPLOAD):
            self._queue_upload(entry)
        for path in self.index.iter_pending_paths(State.DELETE):
            self._begin(1)
            self._delete_q.put_nowait(path)

    # -- accounting ------------------------------------------------------------------------
    def _begin(self, n: int) -> None:
        self._outstanding += n
        self._idle.clear()
        if self._outstanding >= MAX_OUTSTANDING:
            self._room.clear()

    def _end(self, n: int = 1) -> None:
        self._outstanding -= n
        if self._outstanding < MAX_OUTSTANDING:
            self._room.set()
        if self._outstanding <= 0:
            self._outstanding = 0
            self._idle.set()

    def _report_once(self, kind: str, path: str, exc: BaseException | str, *, failed: bool = True) -> None:
        self.tally.add_error(kind, failed=failed)
        if path not in self._reported:
            self._reported.add(path)
            # An OSError's text repeats the path: its strerror says the same once.
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            log.warning("%s: %s: %s", kind, shown(path), reason)

    def _unexpected(self) -> None:
        """A bug, not a condition: keep syncing everything else; the work stays owed in the index."""
        self.tally.add_error("internal")
        log.exception("unexpected error; the work stays in the index for the next pass")

    def _catalogue_path(self, path: bytes) -> str:
        return self.settings.catalogue_path(os.fsdecode(path))

    def _caught_up(self, path: bytes) -> None:
        started = self._event_time.pop(path, None)
        if started is not None:
            metrics.CHANGE_LATENCY.observe(time.monotonic() - started)

    async def _work(self, take: Callable[[], Awaitable[Any]], handle: Callable[[Any], Awaitable[None]]) -> None:
        """One worker of a stage: take an item (a list counts as its length), handle it, settle its debt."""
        while True:
            item = await take()
            try:
                await handle(item)
            except Fatal:
                raise
            except Exception:
                self._unexpected()
            finally:
                self._end(len(item) if isinstance(item, list) else 1)

    # -- finding changes -------------------------------------------------------------------
    async def scan_all(self) -> None:
        started, wall = time.monotonic(), time.time()
        self.scanning = True
        try:
            for root in self.roots:
                await self.scan_tree(root, full=True)
        finally:
            self.scanning = False
        metrics.LAST_SCAN.set(wall + (time.monotonic() - started))
        metrics.SCAN_SECONDS.set(time.monotonic() - started)
        log.info("scan complete", extra={"seconds": round(time.monotonic() - started, 3), **self.tally.as_dict()})

    async def scan_tree(self, root: str, *, full: bool) -> None:
        """Walk ``root``; queue what changed; with ``full``, what the index has but the disk lacks is gone."""
        loop = asyncio.get_running_loop()
        key = os.fsencode(root.rstrip("/") or "/")  # as the walk spells directories
        summaries = self.index.summaries(key)
        signature = self.index.signature(key)  # should the root be a file
        known = {} if signature is None else {key: signature}
        unreadable: list[str] = []
        gone: list[bytes] = []

        def on_error(path: str, exc: OSError) -> None:  # called from the walking thread
            unreadable.append(path)
            loop.call_soon_threadsafe(self._report_once, "unreadable", path, exc)

        chunks = scan(
            root,
            summaries,
            known,
            excluded=self.excluded,
            skip=self.skip,
            follow_symlinks=self.settings.follow_symlinks,  # a link's signature is then its target's
            on_error=on_error,
        )
        while (chunk := await loop.run_in_executor(None, next, chunks, None)) is not None:
            seen, found, listings = chunk
            for listing in listings:  # read, compared and summarised with no await in between
                changed, missing, clean = compare(listing, self.index.in_directory(listing.directory))
                if clean:
                    self.index.set_summary(listing.directory, listing.digest)
                found += changed
                gone += missing
            self.tally.add_seen(seen, seen - len(found))
            if found:
                self.tally.bytes_to_hash += sum(size for _, size in found)
                await self._queue_hash([path for path, _ in found], [size for _, size in found])
        if full:
            # Directories not walked are gone (their files with them), and so is a file root that
            # was not seen; but under a directory we could not read, absence proves nothing.
            blind = tuple(os.fsencode(p.rstrip("/") + "/") for p in unreadable)
            gone += [d for d in summaries if not (d + b"/").startswith(blind)]  # a row's files are below it
            gone += [p for p in known if not p.startswith(blind)]
            if gone:
                self._gone(gone)

    async def _queue_hash(self, paths: list[bytes], sizes: list[int]) -> None:
        batch: list[bytes] = []
        batch_bytes = 0
        for path, size in zip(paths, sizes, strict=True):
            if size > BLOCK:  # a large file is a hand-off of its own
                await self._put_hash([path])
                continue
            batch.append(path)
            batch_bytes += size
            if len(batch) >= HASH_BATCH_FILES or batch_bytes >= HASH_BATCH_BYTES:
                await self._put_hash(batch)
                batch, batch_bytes = [], 0
        if batch:
            await self._put_hash(batch)

    async def _put_hash(self, batch: list[bytes]) -> None:
        await self._room.wait()
        self._begin(len(batch))
        self._hash_q.put_nowait(batch)

    async def on_changes(self, paths: set[str], when: float) -> None:
        """Watch events: look at each path as it is now."""
        to_hash: list[bytes] = []
        sizes: list[int] = []
        gone: list[bytes] = []
        for path in paths:
            root = self._root_of(path)
            if root is None or self.excluded(path[len(root) + 1 :]) or self._skipped(path):
                continue
            key = os.fsencode(path)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                self._event_time.setdefault(key, when)
                gone.append(key)
                continue
            except OSError as exc:
                self._report_once("unreadable", path, exc)
                continue
            if stat.S_ISDIR(st.st_mode):
                if not self.index.under(key):  # a new (or moved-in) directory: its files may predate the watch
                    await self.scan_tree(path, full=False)
                continue
            if self.settings.follow_symlinks and stat.S_ISLNK(st.st_mode):
                try:
                    st = os.stat(path)  # what the link points to is what is catalogued
                except FileNotFoundError:  # dangling
                    gone.append(key)
                    continue
                except OSError as exc:  # a loop of links
                    self._report_once("unreadable", path, exc)
                    continue
            if not is_catalogued(st):  # became a FIFO, a socket, a device (or links to a directory)
                gone.append(key)
                continue
            known = self.index.get(key)
            self.tally.add_seen(1, 0)
            if known is not None and known[1] != State.DELETE and known[0].signature == signature_of(st):
                self.tally.add_seen(0, 1)
                continue
            self._event_time.setdefault(key, when)
            if self._cooling_down(key):
                continue
            to_hash.append(key)
            sizes.append(st.st_size)
        if gone:
            self._gone(gone)
        if to_hash:
            await self._queue_hash(to_hash, sizes)

    def _cooling_down(self, key: bytes) -> bool:
        """A file changing all the time (a log being written) is hashed at most once per
        ``REHASH_SECONDS``: its later events are folded into one look when that time is up."""
        now = time.monotonic()
        last = self._queued_at.get(key)
        if last is not None and now - last < REHASH_SECONDS:
            if key not in self._deferred:
                self._deferred.add(key)
                self._begin(1)
                self._timers += 1

                def again() -> None:
                    self._deferred.discard(key)
                    self._look_again(key)

                asyncio.get_running_loop().call_later(last + REHASH_SECONDS - now, again)
            return True
        if len(self._queued_at) > 10_000:
            self._queued_at = {k: t for k, t in self._queued_at.items() if now - t < REHASH_SECONDS}
        self._queued_at[key] = now
        return False

    def _skipped(self, path: str) -> bool:
        return any(path == s or path.startswith(s + "/") for s in self.skip)

    def _root_of(self, path: str) -> str | None:
        for root in self.roots:
            if path == root or path.startswith(root.rstrip("/") + "/"):
                return root
        return None

    def _gone(self, paths: Iterable[bytes]) -> None:
        """Paths no longer on disk (files, or whole directories): their records are to be deleted."""
        doomed: set[bytes] = set()
        for path in paths:
            known = self.index.get(path)
            if known is not None:
                doomed.add(path)
            doomed.update(self.index.under(path))
        if not doomed:
            return
        self.index.set_state(doomed, State.DELETE)
        for path in sorted(doomed):
            self._begin(1)
            self._delete_q.put_nowait(path)

    # -- hashing ---------------------------------------------------------------------------
    def _hash_many(self, paths: list[bytes]) -> list[Entry | BaseException]:
        out: list[Entry | BaseException] = []
        for path in paths:
            try:
                out.append(hash_file(path, follow_symlinks=self.settings.follow_symlinks))
            except (OSError, FileChanged, NotCatalogued) as exc:
                out.append(exc)
        return out

    async def _hash_batch(self, paths: list[bytes]) -> None:
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self._pool, self._hash_many, paths)
        entries: list[Entry] = []
        gone: list[bytes] = []
        for path, result in zip(paths, results, strict=True):
            if isinstance(result, Entry):
                entries.append(result)
                self._changing.pop(path, None)
            elif isinstance(result, FileNotFoundError | NotCatalogued):
                gone.append(path)
            elif isinstance(result, FileChanged):
                self._look_again_later(path)
            else:
                self._report_once("unreadable", os.fsdecode(path), result)
                self._event_time.pop(path, None)
        if entries:
            self.index.record_hashed(entries)
            for entry in entries:
                self.tally.add_hashed(entry.size)
                self._begin(1)
                self._announce_q.put_nowait(entry)
        if gone:
            self._gone(gone)

    def _look_again_later(self, path: bytes) -> None:
        tries = self._changing.get(path, 0)
        if self._once and tries >= len(CHANGING_RETRY_SECONDS):  # never still: this pass fails it
            self._report_once("changing", os.fsdecode(path), "it kept changing while it was hashed")
            return
        self._changing[path] = tries + 1
        delay = CHANGING_RETRY_SECONDS[min(tries, len(CHANGING_RETRY_SECONDS) - 1)]
        self.tally.add_error("changed_while_hashing", failed=False)
        log.info("%s changed while it was hashed; looking again in %.0f s", shown(os.fsdecode(path)), delay)
        self._begin(1)  # owed until the second look: --once waits for it
        self._timers += 1

        asyncio.get_running_loop().call_later(delay, self._look_again, path)

    def _look_again(self, path: bytes) -> None:
        """Take an owed look (``_begin``), settling the debt only once the look has queued its work
        (the look's first step runs first): the other way round the agent is idle in between, and
        ``--once`` ends without the file. Not after the look is done: that may wait for room."""
        self._timers -= 1
        asyncio.ensure_future(self.on_changes({os.fsdecode(path)}, time.monotonic()))
        asyncio.get_running_loop().call_soon(self._end)

    # -- announcing ------------------------------------------------------------------------
    async def _gather(self, queue: asyncio.Queue[Entry], max_items: int, max_bytes: int | None = None) -> list[Entry]:
        """Wait for one entry, then take more for up to ``batch_linger_seconds``, within the bounds."""
        loop = asyncio.get_running_loop()
        batch = [await queue.get()]
        total = batch[0].size
        deadline = loop.time() + self.settings.batch_linger_seconds
        while len(batch) < max_items and (max_bytes is None or total < max_bytes):
            if not queue.empty():
                batch.append(queue.get_nowait())
            else:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            total += batch[-1].size
        return batch

    def _metadata(self, e: Entry) -> FileMetadata:
        return FileMetadata(
            filepath=self._catalogue_path(e.path),
            hostname=self.settings.node_name,
            ip_address=self.settings.ip_address,
            sha256=e.sha256,
            file_size=e.size,
            file_mode=e.mode,
            file_uid=e.uid,
            file_gid=e.gid,
            file_mtime=e.mtime_ns / 1e9,
            file_atime=e.atime_ns / 1e9,
            file_ctime=e.ctime_ns / 1e9,
        )

    async def _announce(self, batch: list[Entry]) -> None:
        latest = {e.path: e for e in batch}  # one record per path: the newest hash wins
        # One announcement per path in flight: one still being retried (a 503 asks to wait up to
        # a minute) that landed after a newer one would leave the server the older record while
        # the index says synced. A delete in flight goes first too, or it would win.
        busy = self._deleting | self._announcing
        entries = [e for e in latest.values() if e.path not in busy]
        for e in latest.values():
            if e.path in busy:
                self._begin(1)
                asyncio.get_running_loop().call_later(0.2, self._announce_q.put_nowait, e)
        if not entries:
            return
        paths = {e.path for e in entries}
        self._announcing |= paths
        try:
            metas: list[FileMetadata] = []
            valid: list[Entry] = []
            for e in entries:
                try:
                    metas.append(self._metadata(e))
                    valid.append(e)
                except ValueError as exc:  # e.g. a path longer than the protocol allows
                    self.index.set_failed(e.path, str(exc))
                    self._report_once("rejected", os.fsdecode(e.path), exc)
            if not metas:
                return
            try:
                results = await call_with_retry(self.settings.retry_for_seconds, lambda: self.client.put_files(metas))
            except (AuthenticationError, PermissionDenied) as exc:
                raise Fatal(f"the server refuses the agent's key: {exc}") from None
            except CertificateError as exc:  # e.g. the server's certificate was renewed by another CA
                raise Fatal(str(exc)) from None
            except PutPlaceClientError as exc:
                if is_transient(exc):
                    self.tally.add_error("api_unavailable", failed=True)
                    log.warning("announcing %d files failed, kept for the next pass: %s", len(metas), exc)
                    return
                await self._announce_one_by_one(valid, metas)
                return
            self._after_announce(valid, [r.upload_required for r in results])
        finally:
            self._announcing -= paths

    async def _announce_one_by_one(self, entries: list[Entry], metas: list[FileMetadata]) -> None:
        """A batch was refused: find the record the server will not take, keep the others."""
        ok: list[Entry] = []
        needed: list[bool] = []
        for e, meta in zip(entries, metas, strict=True):
            try:
                r = await call_with_retry(self.settings.retry_for_seconds, partial(self.client.put_file, meta))
            except (AuthenticationError, PermissionDenied) as exc:
                raise Fatal(f"the server refuses the agent's key: {exc}") from None
            except StatusError as exc:
                if is_transient(exc):
                    self.tally.add_error("api_unavailable")
                    continue
                self.index.set_failed(e.path, str(exc))
                self._report_once("rejected", os.fsdecode(e.path), exc)
                continue
            except PutPlaceClientError:
                self.tally.add_error("api_unavailable")
                continue
            ok.append(e)
            needed.append(r.upload_required)
        self._after_announce(ok, needed)

    def _after_announce(self, entries: list[Entry], upload_required: list[bool]) -> None:
        upload = [e for e, need in zip(entries, upload_required, strict=True) if need]
        done = [e for e, need in zip(entries, upload_required, strict=True) if not need]
        moved = self.index.advance(upload, State.ANNOUNCE, State.UPLOAD)
        for e, ok in zip(upload, moved, strict=True):
            if ok:  # else a newer version of the file is already on its way
                self._queue_upload(e)
        moved = self.index.advance(done, State.ANNOUNCE, State.SYNCED)
        for e, ok in zip(done, moved, strict=True):
            if ok:
                self.tally.add_deduplicated(e.size)
                self._caught_up(e.path)

    # -- uploading -------------------------------------------------------------------------
    def _queue_upload(self, e: Entry) -> None:
        self._begin(1)
        # Small contents go many to a request: one HTTP round trip and one storage flush per
        # bundle instead of per file, which is what makes a first sync of many small files fast.
        (self._bundle_q if e.size <= BUNDLE_FILE_BYTES else self._upload_q).put_nowait(e)

    def _read_small(self, batch: list[Entry]) -> list[bytes | None]:
        """The bytes of each entry as announced, or None if the file is no longer that version."""
        out: list[bytes | None] = []
        # Non-blocking: a file replaced by a FIFO since it was hashed must not hang this thread.
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if self.settings.follow_symlinks else os.O_NOFOLLOW)
        for e in batch:
            try:
                if stat.S_ISLNK(e.mode):
                    before, data, after = os.lstat(e.path), os.readlink(e.path), os.lstat(e.path)
                else:
                    with open(os.open(e.path, flags), "rb", buffering=0) as f:
                        before = os.fstat(f.fileno())
                        if not stat.S_ISREG(before.st_mode):
                            out.append(None)
                            continue
                        data = f.read(e.size + 1)
                        after = os.fstat(f.fileno())
            except OSError:
                out.append(None)
                continue
            same = signature_of(before) == signature_of(after) == e.signature and len(data) == e.size
            out.append(data if same else None)
        return out

    def _in_flight(self, sha256: str) -> asyncio.Future[bool] | None:
        """The upload of this content another task is doing (or did successfully), if any."""
        future = self._content.get(sha256)
        return future if future is not None and (not future.done() or future.result()) else None

    def _claim(self, sha256: str) -> asyncio.Future[bool]:
        """Say this task uploads ``sha256``; others with the same content wait for its result."""
        if len(self._content) > 10_000:  # remember recent contents only
            for sha in [s for s, f in self._content.items() if f.done()][:5_000]:
                del self._content[sha]
        future = self._content[sha256] = asyncio.get_running_loop().create_future()
        return future

    async def _upload_bundle(self, batch: list[Entry]) -> None:
        loop = asyncio.get_running_loop()
        contents = await loop.run_in_executor(None, self._read_small, batch)
        parts: dict[str, bytes] = {}
        ready: list[Entry] = []
        followers: list[tuple[Entry, asyncio.Future[bool]]] = []
        for e, data in zip(batch, contents, strict=True):
            if data is None:  # changed or gone since it was hashed: look again
                await self.on_changes({os.fsdecode(e.path)}, time.monotonic())
            elif e.sha256 not in parts and (other := self._in_flight(e.sha256)) is not None:
                followers.append((e, other))  # another bundle or upload carries this content
            else:
                parts.setdefault(e.sha256, data)
                ready.append(e)
        claims = {sha: self._claim(sha) for sha in parts}
        try:
            if parts:
                await self._send_bundle(parts, ready)
        finally:
            for future in claims.values():
                if not future.done():
                    future.set_result(False)
        for e, other in followers:
            if await asyncio.shield(other):
                if self.index.advance([e], State.UPLOAD, State.SYNCED)[0]:
                    self.tally.add_deduplicated(e.size)
                    self._caught_up(e.path)
            else:  # that upload failed: this path tries on its own
                self._begin(1)
                self._upload_q.put_nowait(e)

    async def _send_bundle(self, parts: dict[str, bytes], ready: list[Entry]) -> None:
        try:
            results = await call_with_retry(
                self.settings.retry_for_seconds, lambda: self.client.upload_many(list(parts.items()))
            )
        except (AuthenticationError, PermissionDenied) as exc:
            raise Fatal(f"the server refuses the agent's key: {exc}") from None
        except PutPlaceClientError as exc:
            if is_transient(exc):
                self.tally.add_error("api_unavailable")
                log.warning("uploading %d files failed, kept for the next pass: %s", len(ready), exc)
            else:  # e.g. a server with a smaller request cap: send these one by one
                for e in ready:
                    self._begin(1)
                    self._upload_q.put_nowait(e)
            return
        status = {r.sha256: r.status for r in results}
        for sha, result in status.items():
            future = self._content.get(sha)
            if future is not None and not future.done():
                future.set_result(result in (UploadStatus.UPLOADED, UploadStatus.EXISTS))
        counted: set[str] = set()
        done: list[Entry] = []
        for e in ready:
            outcome = status.get(e.sha256)
            if outcome in (UploadStatus.UPLOADED, UploadStatus.EXISTS):
                done.append(e)
            elif outcome == UploadStatus.MISMATCH:
                await self.on_changes({os.fsdecode(e.path)}, time.monotonic())
            elif outcome == UploadStatus.NOT_ANNOUNCED:
                self.index.set_state([e.path], State.ANNOUNCE, only_if=State.UPLOAD)
                self._begin(1)
                self._announce_q.put_nowait(e)
            else:
                self.index.set_failed(e.path, f"upload refused: {outcome}")
                self._report_once("rejected", os.fsdecode(e.path), f"upload refused: {outcome}")
        for e, moved in zip(done, self.index.advance(done, State.UPLOAD, State.SYNCED), strict=True):
            if not moved:
                continue
            if status[e.sha256] == UploadStatus.UPLOADED and e.sha256 not in counted:
                counted.add(e.sha256)
                self.tally.add_uploaded(e.size)
            else:
                self.tally.add_deduplicated(e.size)
            self._caught_up(e.path)

    async def _upload(self, e: Entry) -> None:
        pending = self._in_flight(e.sha256)
        if pending is not None:
            if await asyncio.shield(pending):  # the same content went up for another path
                if self.index.advance([e], State.UPLOAD, State.SYNCED)[0]:
                    self.tally.add_deduplicated(e.size)
                    self._caught_up(e.path)
                return
        future = self._claim(e.sha256)
        uploaded = False
        try:
            uploaded = await self._upload_content(e)
        finally:
            future.set_result(uploaded)
        if uploaded and self.index.advance([e], State.UPLOAD, State.SYNCED)[0]:
            self.tally.add_uploaded(e.size)
            self._caught_up(e.path)

    async def _upload_content(self, e: Entry) -> bool:
        """Upload ``e``'s content; False when it did not happen (the reason is already dealt with)."""

        async def attempt() -> None:
            st = os.stat(e.path) if self.settings.follow_symlinks else os.lstat(e.path)
            if signature_of(st) != e.signature:  # also when it is no longer a file (a FIFO would block)
                raise _Stale
            source: bytes | Path = os.readlink(e.path) if stat.S_ISLNK(st.st_mode) else Path(os.fsdecode(e.path))
            if isinstance(source, Path) and e.size > self.settings.session_threshold_bytes:
                await upload_in_session(
                    self.client,
                    self.index,
                    e,
                    source,
                    parallel=self.settings.session_parallel_chunks,
                    hostname=self.settings.node_name,
                    filepath=self._catalogue_path(e.path),
                )
                return
            await self.client.upload(
                e.sha256, source, hostname=self.settings.node_name, filepath=self._catalogue_path(e.path)
            )

        try:
            await call_with_retry(self.settings.retry_for_seconds, attempt)
        except (_Stale, FileNotFoundError, ContentChanged):
            await self.on_changes({os.fsdecode(e.path)}, time.monotonic())
            return False
        except OSError as exc:
            self._report_once("unreadable", os.fsdecode(e.path), exc)
            return False
        except (AuthenticationError, PermissionDenied) as exc:
            raise Fatal(f"the server refuses the agent's key: {exc}") from None
        except NotFoundError:  # the server no longer knows the announcement: announce again
            self.index.set_state([e.path], State.ANNOUNCE, only_if=State.UPLOAD)
            self._begin(1)
            self._announce_q.put_nowait(e)
            return False
        except StatusError as exc:
            if is_transient(exc):
                self.tally.add_error("api_unavailable")
                log.warning("uploading %s failed, kept for the next pass: %s", shown(os.fsdecode(e.path)), exc)
            elif exc.status_code == 400:  # the content no longer matches the hash: it changed under us
                await self.on_changes({os.fsdecode(e.path)}, time.monotonic())
            else:  # 413, 415: the server will not take this content
                self.index.set_failed(e.path, str(exc))
                self._report_once("rejected", os.fsdecode(e.path), exc)
            return False
        except PutPlaceClientError as exc:
            self.tally.add_error("api_unavailable")
            log.warning("uploading %s failed, kept for the next pass: %s", shown(os.fsdecode(e.path)), exc)
            return False
        return True

    # -- deleting --------------------------------------------------------------------------
    async def _delete(self, path: bytes) -> None:
        if path in self._announcing:  # let the announcement land first, then delete it
            self._begin(1)
            asyncio.get_running_loop().call_later(0.2, self._delete_q.put_nowait, path)
            return
        known = self.index.get(path)
        if known is None or known[1] != State.DELETE:  # came back meanwhile
            return
        filepath = self._catalogue_path(path)
        self._deleting.add(path)
        try:
            await call_with_retry(
                self.settings.retry_for_seconds, lambda: self.client.delete_file(self.settings.node_name, filepath)
            )
        except NotFoundError:
            pass  # never announced, or already deleted: the goal is met
        except (AuthenticationError, PermissionDenied) as exc:
            raise Fatal(f"the server refuses the agent's key: {exc}") from None
        except PutPlaceClientError as exc:
            self.tally.add_error("api_unavailable")
            log.warning("deleting %s failed, kept for the next pass: %s", shown(filepath), exc)
            return
        finally:
            self._deleting.discard(path)
        self.index.remove([path], only_if=State.DELETE)
        self.tally.add_deleted()
        self._caught_up(path)
