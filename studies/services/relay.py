"""The supervised relay beside a running reply: frames to the sockets, checkpoints, liveness.

Three small loops run while the model streams, each riding out its own failures. A publish that
fails (a Redis blip) or a checkpoint that fails (a PostgreSQL blip) is logged, counted in
`collabllm_relay_errors_total` and tried again with backoff while the stream goes on; the next
frame after a failed publish carries the whole text so far, so no socket keeps a gap. The
liveness loop renews the reply's key in Redis (`inflight`) on its own schedule, so the reaper
sees the reply is alive even while its checkpoints fail. A loop that crashes anyway (a bug) is
logged, counted in `collabllm_relay_restarts_total` and restarted: never silently gone.
"""

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from channels.layers import get_channel_layer
from django.conf import settings

from models_serving import metrics
from studies.services import inflight, turns
from studies.services.db import db_call
from studies.services.deltas import utf16_len

if TYPE_CHECKING:
    from studies.services.generation import RunningReply

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 2.0  # seconds before a hanging group_send counts as failed
PUBLISH_BACKOFF = (0.1, 2.0)  # first and longest wait before publishing again after a failure
CHECKPOINT_BACKOFF = (0.25, 5.0)
RESTART_BACKOFF = (0.1, 5.0)  # waits before restarting a relay loop that crashed


class Backoff:
    """Doubling waits between tries, from `first` up to `longest`; reset after a success."""

    def __init__(self, first: float, longest: float) -> None:
        self.first, self.longest, self.next = first, longest, first

    def failed(self) -> float:
        """The wait before the next try (and double the one after)."""
        wait, self.next = self.next, min(self.next * 2, self.longest)
        return wait

    def reset(self) -> None:
        self.next = self.first


def chat_group(participant_id: int) -> str:
    """The channel-layer group every socket of one participant joins."""
    return f"chat.{participant_id}"


async def publish(participant_id: int, frame: dict, *, tries: int = 3) -> bool:
    """Send a frame to the participant's sockets; False (logged, counted) if Redis refused.

    Frames are delivered at most once anyway: the page heals from checkpoint frames, the final
    frame and a resync, so a frame that cannot be sent is not worth failing a turn over.

    The frame is encoded here, once, as the sockets' JSON text (ASCII-escaped, so a lone
    surrogate from a cut emoji stays sendable); each socket sends that text as is.
    """
    backoff = Backoff(*PUBLISH_BACKOFF)
    body = {"type": frame["frame"], **{k: v for k, v in frame.items() if k != "frame"}}
    text = json.dumps(body, separators=(",", ":"))
    message = {"type": "chat.frame", "frame": frame["frame"], "text": text}
    for attempt in range(tries):
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                await get_channel_layer().group_send(chat_group(participant_id), message)
            return True
        except Exception:  # redis-py, channels_redis and socket errors alike; all transient
            metrics.relay_errors_total.labels("publish").inc()
            log.warning("could not publish a %s frame", frame.get("frame"), exc_info=True)
            if attempt + 1 < tries:
                await asyncio.sleep(backoff.failed())
    return False


async def supervise(name: str, reply: "RunningReply", loop: Callable[[], Awaitable[None]]) -> None:
    """Run one relay loop until it returns, restarting it (with backoff) if it crashes."""
    backoff = Backoff(*RESTART_BACKOFF)
    while True:
        try:
            await loop()
            return
        except Exception:
            metrics.relay_restarts_total.labels(name).inc()
            log.exception("relay %s of reply %s crashed; restarting", name, reply.message_id)
            await asyncio.sleep(backoff.failed())


async def _wait(wake: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):  # no extra task per frame, unlike wait_for
            await wake.wait()


async def frames(reply: "RunningReply", wake: asyncio.Event) -> None:
    """Publish new text at most once per frame interval, the whole text every checkpoint interval.

    The first delta goes out at once (leading edge); text that arrives just after a frame waits
    at most one interval. After a failed publish the text stays unsent and the next frame, sent
    after a backoff, carries everything from the last delivered point plus the whole text.

    A delta's `start` counts UTF-16 code units, as JavaScript's strings do (chat.js slices the
    text on screen there): an emoji or any other character outside the Basic Multilingual Plane
    is two units, not one code point. The count runs along with the frames (`units`), so each
    frame measures only its own delta.
    """
    sent, units, heal, last_full = 0, 0, False, time.monotonic()
    interval = settings.CHAT_CHECKPOINT_INTERVAL
    backoff = Backoff(*PUBLISH_BACKOFF)
    while True:
        await _wait(wake, interval)
        if wake.is_set():
            wake.clear()
            end = len(reply.text)
            delta = reply.text[sent:end]
            frame = {"frame": "delta", "id": reply.message_id, "start": units, "delta": delta}
            full = heal or time.monotonic() - last_full >= interval
            if full:
                frame["full"] = reply.text[:end]
            if await publish(reply.participant_id, frame, tries=1):
                sent, units, heal = end, units + utf16_len(delta), False
                last_full = time.monotonic() if full else last_full
                backoff.reset()
            else:
                heal = True
                wake.set()  # the text is still unsent: try again after the backoff
                await asyncio.sleep(backoff.failed())
        await asyncio.sleep(settings.CHAT_FRAME_INTERVAL)


async def checkpoints(reply: "RunningReply", stop: Callable[[], None]) -> None:
    """Save the text so far every checkpoint interval; call `stop` when the reply should end.

    It also runs while no text arrives (a slow first token), so the row's updated_at shows other
    processes that the reply is alive. A failed write is retried sooner, with backoff.
    """
    interval = settings.CHAT_CHECKPOINT_INTERVAL
    backoff = Backoff(*CHECKPOINT_BACKOFF)
    wait = interval
    while True:
        await asyncio.sleep(wait)
        try:
            live = await db_call(turns.turn_checkpoint)(
                message_id=reply.message_id, text=reply.text
            )
        except Exception:  # a database blip; the text stays in memory and the stream goes on
            metrics.relay_errors_total.labels("checkpoint").inc()
            log.warning("checkpoint of reply %s failed", reply.message_id, exc_info=True)
            wait = backoff.failed()
            continue
        backoff.reset()
        wait = interval
        if not live:
            stop()
            return


async def liveness(reply: "RunningReply") -> None:
    """Renew the reply's liveness key in Redis RENEWALS times per TTL until cancelled."""
    every = inflight.alive_ttl() / inflight.RENEWALS
    while True:
        try:
            await _finish_in_thread(inflight.alive_mark, reply.message_id)
            wait = every
        except Exception:  # Redis away: the reaper then falls back to its longer bound
            metrics.relay_errors_total.labels("liveness").inc()
            log.warning("could not renew liveness of reply %s", reply.message_id, exc_info=True)
            wait = min(1.0, every)
        await asyncio.sleep(wait)


async def _finish_in_thread(call: Callable[[int], None], message_id: int) -> None:
    """to_thread, but a cancel waits for the thread: a mark must not land after the clear."""
    mark = asyncio.ensure_future(asyncio.to_thread(call, message_id))
    try:
        await asyncio.shield(mark)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await mark
        raise


async def liveness_clear(message_id: int) -> None:
    """Drop the reply's liveness key (it also expires by itself)."""
    try:
        await asyncio.to_thread(inflight.alive_clear, message_id)
    except Exception:
        log.warning("could not clear liveness of reply %s", message_id, exc_info=True)
