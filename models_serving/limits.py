"""Stream slots per endpoint held in Redis, so a limit on concurrent streams spans web processes.

Each stream holds a lease: a member of a sorted set scored by its expiry (Redis's own clock, so
processes with skewed clocks agree). Every acquire prunes expired leases first, so a process that
crashed mid-stream frees its slots after one TTL; a live stream renews its lease well before then.
A hash maps lease ids to the replica they stream from, which gives routing its per-replica
outstanding counts. Replicas that refused connections are kept in a second sorted set scored by
the end of their cool-down, visible to every process. Keys of one endpoint share a hash tag so the
scripts also run on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import BlockingConnectionPool, Redis

_NOW_AND_PRUNE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, id in ipairs(expired) do redis.call('HDEL', KEYS[2], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
"""

# KEYS: leases, replicas. ARGV: lease id, replica url, limit, ttl ms. Returns 1 if acquired.
_ACQUIRE = (
    _NOW_AND_PRUNE
    + """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""
)

# KEYS: leases. ARGV: lease id, ttl ms. Returns 0 when the lease was already pruned.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
return 1
"""

# KEYS: leases, replicas, down. Returns {replica url of every live lease, replicas cooling down}.
_SNAPSHOT = (
    _NOW_AND_PRUNE
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
return {redis.call('HVALS', KEYS[2]), redis.call('ZRANGE', KEYS[3], 0, -1)}
"""
)

# KEYS: down. ARGV: replica url, cool-down ms.
_MARK_DOWN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Lease:
    """One held stream slot."""

    endpoint: str
    replica_url: str
    lease_id: str
    ttl: float


@dataclass(frozen=True)
class Snapshot:
    """Outstanding streams per replica and the replicas cooling down, as Redis sees them now."""

    outstanding: dict[str, int]
    down: frozenset[str]


# Connections of one process's slots client, and how long a command waits for one when all are
# in use before it raises (a RedisError, as when Redis is away).
MAX_CONNECTIONS = 1000
POOL_WAIT = 10.0


class StreamSlots:
    """Per-endpoint stream leases and replica cool-downs in Redis (one client per event loop)."""

    def __init__(self, redis_url: str, key_prefix: str = "streams") -> None:
        self.prefix = key_prefix
        # Every reply of the process shares this client, each command on a connection of its own
        # while it runs (and a pub/sub connection per reply waiting for a slot): a burst waits
        # for a free connection rather than failing as redis-py's plain pool (100) does.
        pool = BlockingConnectionPool.from_url(
            redis_url, decode_responses=True, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT
        )
        self.redis = Redis.from_pool(pool)
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._renew = self.redis.register_script(_RENEW)
        self._snapshot = self.redis.register_script(_SNAPSHOT)
        self._mark_down = self.redis.register_script(_MARK_DOWN)

    def _keys(self, endpoint: str) -> tuple[str, str, str]:
        base = f"{self.prefix}:{{{endpoint}}}"
        return f"{base}:leases", f"{base}:replicas", f"{base}:down"

    async def acquire(
        self, endpoint: str, replica_url: str, limit: int, ttl: float
    ) -> Lease | None:
        """Take one of the endpoint's `limit` slots for ttl seconds, or None when all are held."""
        leases, replicas, _ = self._keys(endpoint)
        lease = Lease(endpoint, replica_url, uuid.uuid4().hex, ttl)
        got = await self._acquire(
            keys=[leases, replicas], args=[lease.lease_id, replica_url, limit, _ms(ttl)]
        )
        return lease if got else None

    async def renew(self, lease: Lease) -> bool:
        """Push the lease's expiry one TTL ahead; False if it had already expired and was pruned."""
        leases, _, _ = self._keys(lease.endpoint)
        return bool(await self._renew(keys=[leases], args=[lease.lease_id, _ms(lease.ttl)]))

    async def release(self, lease: Lease) -> None:
        """Give the slot back (a no-op for a lease already pruned) and wake the waiters."""
        leases, replicas, _ = self._keys(lease.endpoint)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(leases, lease.lease_id)
            pipe.hdel(replicas, lease.lease_id)
            pipe.publish(self._freed(lease.endpoint), lease.lease_id)
            await pipe.execute()

    def _freed(self, endpoint: str) -> str:
        return f"{self.prefix}:{{{endpoint}}}:freed"

    @contextlib.asynccontextmanager
    async def waiting(self, endpoint: str) -> AsyncIterator[Callable[[float], Awaitable[bool]]]:
        """Listen for released slots of an endpoint while waiting for one.

        Yields `wait(seconds) -> bool`: True as soon as some process releases a slot (it may be
        taken by another waiter first: try again), False when the seconds pass. Subscribing
        before the first retry means no release between a failed acquire and the wait is missed,
        so a waiter does not sit out its backoff while a slot stands free; the timeout only
        covers slots freed by expiry (a crashed process), which publish nothing.
        """
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self._freed(endpoint))

        async def wait(seconds: float) -> bool:
            deadline = asyncio.get_running_loop().time() + seconds
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                if message is not None and message.get("type") == "message":
                    return True
            return False

        try:
            yield wait
        finally:
            await pubsub.aclose()

    async def snapshot(self, endpoint: str) -> Snapshot:
        """Live streams per replica and replicas cooling down, after pruning expired entries."""
        owners, down = await self._snapshot(keys=list(self._keys(endpoint)))
        return Snapshot(dict(Counter(owners)), frozenset(down))

    async def mark_down(self, endpoint: str, replica_url: str, cooldown: float) -> None:
        """Mark a replica unhealthy for every process until the cool-down ends."""
        await self._mark_down(keys=[self._keys(endpoint)[2]], args=[replica_url, _ms(cooldown)])

    async def aclose(self) -> None:
        """Close the Redis connections."""
        await self.redis.aclose()


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
