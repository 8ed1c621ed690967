"""Webhook administration (admin scope): subscriptions, dead letters and their replay."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query

from putplace_api.deps import AdminKey, StateDep
from putplace_api.errors import KEYED_ROUTE_ERRORS, BadRequest, NotFound, error_responses
from putplace_api.store.base import DeliveryRow, SubscriptionRow, WebhookStore, new_id
from putplace_api.webhooks.signing import new_secret
from putplace_client.models import (
    DeadLetter,
    MessageResponse,
    Page,
    ReplayResponse,
    WebhookCreate,
    WebhookCreated,
    WebhookEvent,
    WebhookInfo,
)

router = APIRouter(prefix="/webhooks", tags=["webhooks"], responses=KEYED_ROUTE_ERRORS)

_ID = r"^[0-9a-f]{24}$"
# Documented, not enforced by FastAPI: an id of the wrong shape is a 404 like any unknown id.
SubscriptionId = Annotated[str, Path(json_schema_extra={"pattern": _ID})]
DeliveryId = Annotated[str, Path(json_schema_extra={"pattern": _ID})]


def _store(state: StateDep) -> WebhookStore:
    store: WebhookStore = state.store  # type: ignore[assignment]  # both backends implement it
    return store


def to_info(row: SubscriptionRow) -> WebhookInfo:
    return WebhookInfo(
        id=row.id,
        url=row.url,
        events=[WebhookEvent(e) for e in row.events],
        description=row.description,
        created_at=row.created_at,
        active=row.active,
    )


def to_dead_letter(row: DeliveryRow) -> DeadLetter:
    return DeadLetter(
        id=row.id,
        subscription_id=row.subscription_id,
        event=WebhookEvent(row.event),
        created_at=row.created_at,
        attempts=row.attempts,
        last_error=row.last_error,
        payload=json.loads(row.body),
    )


@router.post("/subscriptions", status_code=201, response_model=WebhookCreated)
async def create_subscription(body: WebhookCreate, state: StateDep, _: AdminKey) -> WebhookCreated:
    """Subscribe a URL to events; the response is the only place its signing secret appears."""
    if body.url.scheme not in ("http", "https"):
        raise BadRequest("The webhook URL must be http:// or https://")
    row = SubscriptionRow(
        id=new_id(),
        url=str(body.url),
        events=tuple(dict.fromkeys(e.value for e in body.events)),
        secret=new_secret(),
        created_at=datetime.now(UTC),
        description=body.description,
    )
    await _store(state).insert_subscription(row)
    state.webhooks.forget_subscriptions()
    return WebhookCreated(**to_info(row).model_dump(), secret=row.secret)


@router.get("/subscriptions", response_model=list[WebhookInfo])
async def list_subscriptions(state: StateDep, _: AdminKey) -> list[WebhookInfo]:
    return [to_info(r) for r in await _store(state).list_subscriptions()]


@router.delete("/subscriptions/{subscription_id}", response_model=MessageResponse, responses=error_responses(404))
async def delete_subscription(subscription_id: SubscriptionId, state: StateDep, _: AdminKey) -> MessageResponse:
    """Unsubscribe; deliveries still queued for it (dead letters too) go with it."""
    if not _well_formed(subscription_id) or not await _store(state).delete_subscription(subscription_id):
        raise NotFound("Webhook subscription not found")
    state.webhooks.forget_subscriptions()
    return MessageResponse(message=f"Webhook subscription {subscription_id} deleted")


@router.get("/dead_letters", response_model=Page[DeadLetter])
async def dead_letters(
    state: StateDep,
    _: AdminKey,
    cursor: Annotated[str | None, Query(json_schema_extra={"pattern": _ID})] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Page[DeadLetter]:
    """Deliveries given up after their last attempt, oldest first."""
    if cursor is not None and not _well_formed(cursor):
        raise BadRequest("Invalid cursor")
    rows = await _store(state).dead_deliveries(cursor, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return Page[DeadLetter](items=[to_dead_letter(r) for r in rows], next_cursor=rows[-1].id if more else None)


@router.post("/dead_letters/replay", response_model=ReplayResponse)
async def replay_all(state: StateDep, _: AdminKey) -> ReplayResponse:
    """Queue every dead letter again, with fresh attempts."""
    replayed = await _store(state).replay_deliveries(None, datetime.now(UTC))
    state.webhooks.queued.set()
    return ReplayResponse(replayed=replayed)


@router.post("/dead_letters/{delivery_id}/replay", response_model=ReplayResponse, responses=error_responses(404))
async def replay_one(delivery_id: DeliveryId, state: StateDep, _: AdminKey) -> ReplayResponse:
    """Queue one dead letter again, with fresh attempts."""
    if not _well_formed(delivery_id) or not await _store(state).replay_deliveries([delivery_id], datetime.now(UTC)):
        raise NotFound("No dead letter with that id")
    state.webhooks.queued.set()
    return ReplayResponse(replayed=1)


def _well_formed(ident: str) -> bool:
    return len(ident) == 24 and all(c in "0123456789abcdef" for c in ident)
