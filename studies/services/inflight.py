"""Replies in flight as Redis sees them: liveness keys and finished replies held for the database.

A process generating a reply renews `alive:<message id>` (a short TTL) on its own schedule,
independent of the database checkpoint, so the reaper can tell a live reply whose checkpoints
fail from one whose process is gone. A finished reply whose final write found the database away
is held under `held:<message id>` (a long TTL) and listed in `held:index` and in its participant's
`held:p:<participant id>` until someone (its own process, the periodic sweep, or a socket connect
of that participant) writes it.

Plain, synchronous redis-py: the reaper runs in Celery and on the database thread; the relay calls
these through `asyncio.to_thread`. Every function raises RedisError when Redis is away; callers
decide what that means.
"""

import json
import math
import os
import socket
from typing import Any

from django.conf import settings
from redis import Redis

from studies.services.redis import redis_client

KEY_PREFIX = "collabllm:replies"
# The key is renewed RENEWALS times per TTL: a process whose event loop stalls for up to three
# quarters of the TTL (a loaded machine) still keeps its replies from being reaped.
RENEWALS = 4
# The shortest liveness TTL (CHAT_ALIVE_SECONDS). A TTL of 0 would have the relay renew without
# pause, and Redis refuses a key that lives 0 ms.
# `manage.py check` refuses less (webapp/checks.py); a process started without it clamps.
MIN_ALIVE_SECONDS = 1.0
# Redis calls here are tiny; waiting longer than this for one means Redis is away. Short, since
# the reaper asks from the database thread of a web process (on socket connect).
REDIS_TIMEOUT = 0.5


def _redis() -> Redis:
    return redis_client(REDIS_TIMEOUT)


def _alive_key(message_id: int) -> str:
    return f"{KEY_PREFIX}:alive:{message_id}"


def _held_key(message_id: int) -> str:
    return f"{KEY_PREFIX}:held:{message_id}"


def _index_key(participant_id: int | None = None) -> str:
    if participant_id is None:
        return f"{KEY_PREFIX}:held:index"
    return f"{KEY_PREFIX}:held:p:{participant_id}"


def alive_ttl() -> float:
    """Seconds a liveness key outlives its last renewal (renewed RENEWALS times within it).

    CHAT_ALIVE_SECONDS, never under MIN_ALIVE_SECONDS (nor a value that is not a finite number).
    """
    ttl = float(settings.CHAT_ALIVE_SECONDS)
    return ttl if math.isfinite(ttl) and ttl >= MIN_ALIVE_SECONDS else MIN_ALIVE_SECONDS


def alive_mark(message_id: int) -> None:
    """Say that this process is still generating (or holding) the reply."""
    owner = f"{socket.gethostname()}:{os.getpid()}"
    _redis().set(_alive_key(message_id), owner, px=int(alive_ttl() * 1000))


def alive_clear(message_id: int) -> None:
    """Drop the liveness key once the reply is written or ended."""
    _redis().delete(_alive_key(message_id))


def alive_among(message_ids: list[int]) -> set[int]:
    """The replies among these whose process renewed its liveness key recently."""
    if not message_ids:
        return set()
    values = _redis().mget([_alive_key(pk) for pk in message_ids])
    return {pk for pk, value in zip(message_ids, values, strict=True) if value is not None}


def held_put(message_id: int, record: dict[str, Any]) -> None:
    """Hold a finished reply (turn_complete's keyword arguments and its participant_id)."""
    participant_id = int(record["participant_id"])
    with _redis().pipeline(transaction=True) as pipe:
        pipe.set(_held_key(message_id), json.dumps(record), ex=int(settings.CHAT_HOLD_SECONDS))
        pipe.sadd(_index_key(), message_id)
        pipe.sadd(_index_key(participant_id), message_id)
        pipe.expire(_index_key(participant_id), int(settings.CHAT_HOLD_SECONDS))
        pipe.execute()


def held_get(message_id: int) -> dict[str, Any] | None:
    """The held reply, if one is held and has not expired."""
    raw = _redis().get(_held_key(message_id))
    return json.loads(raw) if raw is not None else None


def held_ids(participant_id: int | None = None) -> list[int]:
    """Ids of the replies held for one participant, or of every held reply (None).

    Expired entries are pruned from the index read.
    """
    redis, index = _redis(), _index_key(participant_id)
    ids = sorted(int(pk) for pk in redis.smembers(index))
    if not ids:
        return []
    present = redis.mget([_held_key(pk) for pk in ids])
    gone = [pk for pk, raw in zip(ids, present, strict=True) if raw is None]
    if gone:
        redis.srem(index, *gone)
    return [pk for pk in ids if pk not in gone]


def held_drop(message_id: int, participant_id: int) -> None:
    """Forget a held reply once it is stored."""
    with _redis().pipeline(transaction=True) as pipe:
        pipe.delete(_held_key(message_id))
        pipe.srem(_index_key(), message_id)
        pipe.srem(_index_key(participant_id), message_id)
        pipe.execute()
