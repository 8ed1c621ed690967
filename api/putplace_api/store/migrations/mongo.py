"""Migrations of the MongoDB store, run by ``MongoStore.open`` before it serves.

Each migration ends by inserting its marker into ``markers``; a store that finds the marker
skips it. Until then every replica that opens the database runs it, several at once when
they start together: so every step is idempotent and conditional on what it changes (a
document is converted only while it still has the old shape), and no replica serves before
its own run has finished -- when any replica serves, no old-shape document is left. (A replica
of the *previous* version still running, as in a rolling upgrade, may write more: the store reads
a record without the flag as unflagged, right for every UTF-8 name; a non-UTF-8 name written so
keeps its old text as a plain name, and one that clashes with a migrated name while a migration
runs becomes that name's history.)

1. Names are (filepath, filepath_escaped). The flag is written on every record (documents
   without it are the old shape), the unique index becomes (hostname, filepath,
   filepath_escaped), and names the old server escaped are re-read by ``legacy_name``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from pymongo.errors import DuplicateKeyError, OperationFailure

from putplace_api.store.base import new_id
from putplace_api.store.migrations import legacy_name
from putplace_client.names import Name

__all__ = ["FILES_NAME_INDEX", "HISTORY_NAME_INDEX", "upgrade"]

log = logging.getLogger("putplace.store")

FILES_NAME_INDEX = "hostname_filepath_escaped"
HISTORY_NAME_INDEX = "hostname_filepath_escaped_superseded_at"
_OLD_INDEXES = {"files": "hostname_filepath", "file_history": "hostname_filepath_superseded_at"}
_NAMES_MARKER = "migration:1-filepath-escaped"
_INDEX_NOT_FOUND = 27
_OLD_SHAPE = {"filepath_escaped": {"$exists": False}}
_MAYBE_ESCAPED = {"$regex": r"\\x[89a-f][0-9a-f]"}  # what the old server wrote for a non-UTF-8 byte


async def upgrade(db: Any, now: datetime) -> None:
    """Run the migrations not yet marked done; the store's indexes exist already."""
    if await db["markers"].find_one({"_id": _NAMES_MARKER}) is None:
        await _names(db, now)
        try:
            await db["markers"].insert_one({"_id": _NAMES_MARKER, "created_at": now})
        except DuplicateKeyError:
            pass  # another replica finished it too


async def _names(db: Any, now: datetime) -> None:
    for collection, index in _OLD_INDEXES.items():
        try:
            await db[collection].drop_index(index)  # the new one exists: no moment without a unique index
        except OperationFailure as exc:
            if exc.code != _INDEX_NOT_FOUND:
                raise
    for collection in ("files", "file_history"):
        # The few that may be escaped, one by one; then all the others at once.
        await _convert(db, collection, {**_OLD_SHAPE, "filepath": _MAYBE_ESCAPED}, now)
        try:
            await db[collection].update_many(_OLD_SHAPE, {"$set": {"filepath_escaped": False}})
        except OperationFailure:
            # A name held twice: an older replica wrote meanwhile. (FerretDB reports that as an
            # internal error, not as a duplicate key.) Those left, one by one.
            await _convert(db, collection, _OLD_SHAPE, now)


async def _convert(db: Any, collection: str, query: dict[str, Any], now: datetime) -> None:
    async for doc in db[collection].find(query):
        name = legacy_name(doc["filepath"])
        if collection == "files":
            held = {"hostname": doc["hostname"], "filepath": name.filepath, "filepath_escaped": name.escaped}
            if await db["files"].find_one({**held, "_id": {"$ne": doc["_id"]}}, {"_id": 1}) is not None:
                await _superseded(db, doc, name, now)
                continue
        await db[collection].update_one(
            {"_id": doc["_id"], **_OLD_SHAPE}, {"$set": {"filepath": name.filepath, "filepath_escaped": name.escaped}}
        )


async def _superseded(db: Any, doc: dict[str, Any], name: Name, now: datetime) -> None:
    """An old-shape record whose name a new-shape record holds already (an older replica wrote
    it after this migration began): the new record is the current one; the old one becomes
    its history, as a replaced version."""
    entry = {k: v for k, v in doc.items() if k not in ("_id", "rev")}
    entry |= {"_id": f"{doc['_id']}@migrated", "id": doc["_id"], "filepath": name.filepath}
    entry |= {"filepath_escaped": name.escaped, "superseded_at": now, "event": "replaced", "order": new_id()}
    try:
        await db["file_history"].insert_one(entry)
    except DuplicateKeyError:
        pass  # archived by another replica
    await db["files"].delete_one({"_id": doc["_id"], **_OLD_SHAPE})
    log.warning("an old-format record of %r was superseded by a newer one: kept as its history", doc["filepath"])
