"""The process's plain, synchronous Redis clients: one per (URL, timeout), shared by the services.

Services that ask Redis from the database thread or a worker thread (liveness keys, held replies,
entry-attempt counters) take their client here instead of building their own: one connection
pool per URL and timeout, replies decoded to str. Commands raise RedisError when Redis is away.
"""

from functools import cache

from django.conf import settings
from redis import Redis


@cache
def _client(url: str, timeout: float) -> Redis:
    return Redis.from_url(
        url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout
    )


def redis_client(timeout: float) -> Redis:
    """The cached client for settings.REDIS_URL whose calls give up after `timeout` seconds."""
    return _client(settings.REDIS_URL, timeout)
