"""Database calls from the event loop, side by side on a bounded set of threads.

channels' `database_sync_to_async` is thread-sensitive: every call of a web process runs on one
thread, so a turn start waits behind every checkpoint, completion and presence frame of every
other participant. `run` uses an executor of its own instead, CHAT_DB_THREADS threads (by
default 2, never more than the connection pool's max_size less one, which stays for the
process's thread-sensitive work: sync views, the admin), so those calls run at the same time.

Why not more: the ORM work of these calls is Python that holds the GIL, and each thread running
it takes GIL time from the event loop that relays the tokens. In single runs of
benchmarks/stream_overhead.py (N=50, 25 ms token gap, 2 CPUs shared with other work), 2 threads
cut the added time to first token against the one thread-sensitive thread (p50 199 -> 89 ms,
p99 423 -> 170 ms); 9 threads cut it no further (83 / 326 ms) and doubled the newest-token p99
of 2 threads (126 -> 253 ms).

Every call ends by closing its thread's connection: with the pool (DATABASE_POOL) that hands it
back to the pool, without one it is what CONN_MAX_AGE=0 does anyway. So no idle thread keeps a
connection, these calls never hold more than CHAT_DB_THREADS connections at once, and nothing is
left open when the executor is shut down (`shutdown`, at process or test teardown).
"""

import asyncio
import contextvars
import functools
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from django.conf import settings
from django.db import connections

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_THREADS = 2  # see above: more threads take GIL time from the relaying event loop

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def threads() -> int:
    """How many calls may run (and hold a connection) at once."""
    if settings.CHAT_DB_THREADS:
        return int(settings.CHAT_DB_THREADS)
    pool = settings.DATABASES["default"].get("OPTIONS", {}).get("pool")
    if isinstance(pool, dict):
        return max(1, min(DEFAULT_THREADS, int(pool.get("max_size", DEFAULT_THREADS + 1)) - 1))
    return DEFAULT_THREADS


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=threads(), thread_name_prefix="db")
        return _executor


def _closing(call: Callable[[], T]) -> T:
    try:
        return call()
    finally:
        connections.close_all()  # back to the pool, or closed


async def run(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a sync function that uses the database on the executor; return its result."""
    call = functools.partial(fn, *args, **kwargs)
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_pool(), context.run, _closing, call)


def db_call(fn: Callable[P, T]) -> Callable[P, Awaitable[T]]:
    """`fn` as a coroutine function that runs on the executor (like database_sync_to_async)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return await run(fn, *args, **kwargs)

    return wrapper


def shutdown() -> None:
    """Wait for running calls and stop the threads (their connections are closed already)."""
    global _executor
    with _lock:
        executor, _executor = _executor, None
    if executor is not None:
        executor.shutdown(wait=True)
