"""The webhook section of the metadata store contract, on both backends: the delivery queue
(order, failure, dead letters, replay) and the per-subscription lease, raced by several
connections at once (on FerretDB a conditional update is no compare-and-set: the lease must hold
anyway)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import cast

import pytest

from putplace_api.store.base import (
    DELIVERY_DEAD,
    DELIVERY_PENDING,
    DeliveryRow,
    MetadataStore,
    SubscriptionRow,
    WebhookStore,
    delivery_lease,
    new_id,
)
from putplace_api.webhooks.events import delivery_id
from tests.api.test_store_contract import T0, anyio_backend, at, make_store, store

__all__ = ["anyio_backend", "make_store", "store"]  # the contract suite's fixtures, used here

pytestmark = pytest.mark.anyio


def subscription(**fields: object) -> SubscriptionRow:
    values: dict[str, object] = {
        "id": new_id(),
        "url": "http://127.0.0.1:9/hook",
        "events": ("file.deleted",),
        "secret": "whsec_test",
        "created_at": T0,
    }
    values.update(fields)
    return SubscriptionRow(**values)  # type: ignore[arg-type]


def deliveries(sub: SubscriptionRow, count: int) -> list[DeliveryRow]:
    return [DeliveryRow(delivery_id(), sub.id, "file.deleted", f'{{"n":{n}}}', T0, T0) for n in range(count)]


async def head_of(hooks: WebhookStore, subscription_id: str) -> DeliveryRow:
    head = await hooks.delivery_head(subscription_id)
    assert head is not None, "the queue is empty"
    return head


async def test_the_queue_keeps_order_retries_and_dead_letters(store: MetadataStore) -> None:
    hooks = cast(WebhookStore, store)
    sub, other = subscription(description="d"), subscription(events=("file.uploaded", "file.deleted"))
    await hooks.insert_subscription(sub)
    await hooks.insert_subscription(other)
    assert await hooks.list_subscriptions() == [sub, other]
    first, second, third = deliveries(sub, 3)
    await hooks.enqueue_deliveries([first, second, third, *deliveries(other, 2)])
    assert await hooks.delivery_head(sub.id) == first

    await hooks.delivery_done(first.id)
    assert (await head_of(hooks, sub.id)).id == second.id
    await hooks.delivery_failed(second.id, 1, at(5), "HTTP 500", False)
    head = await head_of(hooks, sub.id)
    assert (head.id, head.attempts, head.next_attempt_at, head.last_error) == (second.id, 1, at(5), "HTTP 500")
    await hooks.delivery_failed(second.id, 2, at(9), "ConnectError: refused", True)
    assert (await head_of(hooks, sub.id)).id == third.id, "a dead letter no longer blocks the queue"
    (dead,) = await hooks.dead_deliveries(None, 10)
    assert (dead.id, dead.status, dead.attempts, dead.body) == (second.id, DELIVERY_DEAD, 2, second.body)
    assert await hooks.dead_deliveries(dead.id, 10) == []
    counts = await hooks.delivery_counts()
    assert counts == {DELIVERY_PENDING: 3, DELIVERY_DEAD: 1}

    assert await hooks.replay_deliveries([third.id, "0" * 24], at(10)) == 0, "only dead letters replay"
    assert await hooks.replay_deliveries([second.id], at(10)) == 1
    head = await head_of(hooks, sub.id)
    assert (head.id, head.attempts, head.status, head.next_attempt_at) == (second.id, 0, DELIVERY_PENDING, at(10))
    assert await hooks.replay_deliveries(None, at(11)) == 0

    assert await hooks.purge_deliveries({sub.id, other.id}, at(3600)) == 0, "kept: both exist"
    assert await hooks.purge_deliveries({sub.id}, T0) == 0, "kept: not queued before the cutoff"
    assert await hooks.purge_deliveries({sub.id}, at(1)) == 2
    assert await hooks.delivery_head(other.id) is None
    await hooks.enqueue_deliveries(deliveries(other, 1))
    assert await hooks.delete_subscription(sub.id)
    assert not await hooks.delete_subscription(sub.id)
    assert await hooks.delivery_head(sub.id) is None
    assert (await head_of(hooks, other.id)).body == '{"n":0}'
    assert await hooks.list_subscriptions() == [other]


async def test_a_lease_has_one_holder_across_connections(make_store: Callable[[], MetadataStore]) -> None:
    stores = [cast(WebhookStore, make_store()) for _ in range(4)]
    for s in stores:
        await cast(MetadataStore, s).open()
    try:
        sub = delivery_lease("0123456789abcdef01234567")
        for round_ in range(6):
            now = at(round_ * 100)  # every earlier lease has run out by now
            won = await asyncio.gather(
                *(s.take_lease(sub, f"h{i}", now, now + timedelta(seconds=30)) for i, s in enumerate(stores))
            )
            assert sum(won) == 1, f"round {round_}: {won}"
            holder = won.index(True)
            later = now + timedelta(seconds=10)
            assert await stores[holder].take_lease(sub, f"h{holder}", later, later + timedelta(seconds=30))
            rival = (holder + 1) % len(stores)
            assert not await stores[rival].take_lease(sub, f"h{rival}", later, later)
            if round_ % 2:  # released: free at once; else it runs out
                await stores[holder].release_lease(sub, f"h{holder}")
                assert await stores[rival].take_lease(sub, f"h{rival}", later, later)
    finally:
        for s in stores:
            await cast(MetadataStore, s).close()
