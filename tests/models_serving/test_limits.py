"""Stream slots in real Redis (db 13 by default, a fresh key prefix per test)."""

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest

from models_serving.limits import StreamSlots

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13")
A, B = "http://a/v1", "http://b/v1"


@pytest.fixture
async def slots() -> AsyncIterator[StreamSlots]:
    prefix = f"test-slots-{uuid.uuid4().hex}"
    slots = StreamSlots(REDIS_URL, prefix)
    yield slots
    keys = [k async for k in slots.redis.scan_iter(f"{prefix}:*")]
    if keys:
        await slots.redis.delete(*keys)
    await slots.aclose()


async def test_concurrent_acquires_never_exceed_the_limit(slots):
    got = await asyncio.gather(*(slots.acquire("ep", A, 5, 30) for _ in range(50)))
    assert sum(lease is not None for lease in got) == 5


async def test_a_burst_of_commands_beyond_the_connection_pool_waits_instead_of_failing(slots):
    # 200 replies of one web process asking at once (an arrival burst at the chat step): each
    # command needs a connection of its own; redis-py's default pool (100) raised
    # MaxConnectionsError, and every such reply ended as an internal error.
    got = await asyncio.gather(*(slots.acquire("ep", A, 1000, 30) for _ in range(300)))
    assert sum(lease is not None for lease in got) == 300


async def test_a_released_slot_can_be_taken_again(slots):
    lease = await slots.acquire("ep", A, 1, 30)
    assert lease is not None
    assert await slots.acquire("ep", A, 1, 30) is None
    await slots.release(lease)
    assert await slots.acquire("ep", A, 1, 30) is not None


async def test_the_limit_counts_streams_on_every_replica_of_the_endpoint(slots):
    assert await slots.acquire("ep", A, 2, 30) is not None
    assert await slots.acquire("ep", B, 2, 30) is not None
    assert await slots.acquire("ep", B, 2, 30) is None
    assert await slots.acquire("other", B, 2, 30) is not None


async def test_an_expired_lease_frees_its_slot_and_leaves_the_counts(slots):
    leaked = await slots.acquire("ep", A, 1, 0.05)
    assert leaked is not None
    await asyncio.sleep(0.2)
    assert await slots.acquire("ep", B, 1, 30) is not None
    assert (await slots.snapshot("ep")).outstanding == {B: 1}
    assert not await slots.renew(leaked)


async def test_a_renewed_lease_outlives_its_first_ttl(slots):
    lease = await slots.acquire("ep", A, 1, 0.3)
    assert lease is not None
    for _ in range(4):
        await asyncio.sleep(0.1)
        assert await slots.renew(lease)
    assert await slots.acquire("ep", A, 1, 30) is None


async def test_the_snapshot_counts_outstanding_streams_per_replica(slots):
    for url in (A, A, B):
        await slots.acquire("ep", url, 10, 30)
    assert (await slots.snapshot("ep")).outstanding == {A: 2, B: 1}


async def test_a_replica_marked_down_is_seen_until_its_cool_down_ends(slots):
    await slots.mark_down("ep", A, 0.1)
    assert (await slots.snapshot("ep")).down == {A}
    assert (await slots.snapshot("other")).down == frozenset()
    await asyncio.sleep(0.25)
    assert (await slots.snapshot("ep")).down == frozenset()


async def test_a_waiter_hears_a_release_at_once(slots):
    first = await slots.acquire("ep-wait", "http://a", 1, 30)
    assert first is not None
    async with slots.waiting("ep-wait") as freed:
        assert await freed(0.2) is False  # nothing released yet
        asyncio.get_running_loop().call_later(
            0.05, lambda: asyncio.ensure_future(slots.release(first))
        )
        assert await freed(10) is True  # woken by the release, well before the 10 s
    assert await slots.acquire("ep-wait", "http://b", 1, 30) is not None
