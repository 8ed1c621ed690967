"""Large files go up in chunks through an upload session, resumed where it stopped.

The session's id is kept in the index (``Index.remember_session``) before any chunk is sent:
after a restart -- even a ``kill -9`` mid-chunk -- the agent asks the server which chunks it
holds and sends only the others. Called by ``sync.Agent`` for files above
``session_threshold_bytes``; the retries around it are the caller's.
"""

from __future__ import annotations

import logging
from pathlib import Path

from putplace_agent.index import Entry, Index
from putplace_agent.retry import is_transient
from putplace_client import ConflictError, NotFoundError, PutPlaceClient, StatusError, UploadSession

__all__ = ["upload_in_session"]

log = logging.getLogger(__name__)


async def _session(client: PutPlaceClient, index: Index, e: Entry) -> UploadSession | None:
    """The session to send ``e`` in: the one it was being sent in, or a new one; None when the
    server holds the content already."""
    upload_id = index.session_of(e)
    if upload_id is not None:
        try:
            session = await client.upload_session(upload_id)
            log.info("resuming upload session %s: %d of %d chunks held", upload_id, len(session.held), session.chunks)
            return session
        except NotFoundError:  # expired, or discarded by the server: start again
            index.forget_session(e.path)
    try:
        session = await client.create_upload_session(e.sha256, e.size)
    except ConflictError:
        return None  # stored meanwhile (another node's upload): nothing to send
    index.remember_session(e, session.upload_id)
    return session


async def upload_in_session(
    client: PutPlaceClient, index: Index, e: Entry, path: Path, *, parallel: int, hostname: str, filepath: str
) -> None:
    """Send ``e``'s content in chunks and complete it. A refusal (e.g. the content no longer
    hashing to its sha256) ends the session: the server discarded it, so the index forgets it."""
    session = await _session(client, index, e)
    if session is None:
        return
    try:
        await client.upload_chunked(session, path, parallel=parallel, hostname=hostname, filepath=filepath)
    except StatusError as exc:
        if not is_transient(exc):  # refused for good: nothing of the session is worth keeping
            index.forget_session(e.path)
        raise
    index.forget_session(e.path)
