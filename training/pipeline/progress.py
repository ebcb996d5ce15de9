"""Run a coroutine on its own event loop in a thread while progress is reported in this thread.

Callers keep their own thread for what they do with progress (a Django stage writes it to the
database, which it may not do from inside an event loop), and hear from the run at least every
`beat` seconds even when no item finished, so a long model call still shows the stage alive.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from models_serving.client import close_clients

T = TypeVar("T")
Progress = Callable[[int, int], None]


def run_reporting(
    make: Callable[[Progress], Coroutine[Any, Any, T]],
    on_progress: Progress | None,
    *,
    beat: float = 30.0,
) -> T:
    """asyncio.run(make(report)) in a thread; each report(done, total) reaches on_progress here."""
    events: queue.Queue[tuple[int, int] | None] = queue.Queue()
    outcome: dict[str, Any] = {}

    async def main() -> T:
        try:
            return await make(lambda done, total: events.put((done, total)))
        finally:
            await close_clients()  # the clients belong to this loop, which closes next

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(main())
        except BaseException as exc:  # handed to the calling thread below
            outcome["error"] = exc
        finally:
            events.put(None)

    thread = threading.Thread(target=target, name="pipeline-loop", daemon=True)
    thread.start()
    last: tuple[int, int] | None = None
    while True:
        try:
            item = events.get(timeout=beat)
        except queue.Empty:
            item = last  # nothing finished lately: repeat the last count as a heartbeat
            if item is None:
                continue
        else:
            if item is None:
                break
        last = item
        if on_progress is not None:
            on_progress(*item)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
