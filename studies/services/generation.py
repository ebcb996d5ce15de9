"""Generating a reply: owned by the turn, not by the socket that asked for it.

`generation_start` runs the reply as a task of the web process. Beside the model stream runs the
supervised relay (`relay`): deltas coalesced into frames (at most one per CHAT_FRAME_INTERVAL)
published to the participant's channel-layer group, so a socket on any web process can follow;
checkpoints of the partial text every CHAT_CHECKPOINT_INTERVAL (those frames also carry the whole
text so a socket that joined late heals any gap); and a liveness key in Redis that tells the
reaper this process still owns the reply. Each rides out Redis and PostgreSQL blips.

The finished reply is written once. A database error on that write is retried with backoff
(FINAL_WRITE_BACKOFF); if the database stays away, the reply is held in Redis (`inflight`) and
the participant sees a "saving" frame; this process keeps trying (HELD_BACKOFF) with the text in
memory, and the periodic sweep writes the held copy should this process die first.

Before streaming, the reply takes one of its endpoint's stream slots in Redis (`limits`) on the
replica with the fewest outstanding streams (`routing`). While none is free the
participant sees a "busy" frame and the reply tries again with backoff until BUSY_DEADLINE. A
connection error or 5xx before the first token moves to the next replica; once text has streamed
it is never retried. A checkpoint that finds the participant gone or the study closed cancels the
reply, which drops the upstream connection.
"""

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from django.conf import settings
from django.db import DatabaseError
from redis.exceptions import RedisError

from models_serving import metrics
from models_serving.client import (
    EndpointSpec,
    GenerationResult,
    ModelCallError,
    count_tokens,
    stream_chat,
)
from models_serving.limits import Lease, StreamSlots
from models_serving.routing import choose_replica
from studies.models import Message
from studies.selectors import GenerationPlan, generation_plan, message_frame
from studies.services import inflight, relay, turns
from studies.services.db import db_call
from studies.services.errors import StudyActionError
from studies.services.relay import Backoff, publish
from studies.services.relay import chat_group as chat_group  # the consumer's name for it

log = logging.getLogger(__name__)
T = TypeVar("T")

KEY_PREFIX = "collabllm:streams"
BUSY_DEADLINE = 60.0  # seconds a reply waits for a free slot before its turn fails as busy
BUSY_BACKOFF = (0.5, 4.0)  # first and longest wait between tries for a slot
LEASE_TTL = 30.0  # a crashed process's slots free themselves after this; live ones renew at 1/3
DOWN_COOLDOWN = 15.0  # seconds a replica that refused a connection is passed over by every process
NO_LIMIT = 1_000_000
# Failures that cannot have produced text the participant saw; worth another replica.
RETRY_BEFORE_FIRST_TOKEN = frozenset({"unreachable", "server_error", "malformed_stream"})
BUSY_MESSAGE = "The assistant is busy right now. Please retry in a minute."
# The final write is tried this many times, after these waits (~4 s), before the finished reply
# is held in Redis; then the process keeps trying with HELD_BACKOFF until it is stored or
# CHAT_HOLD_SECONDS (the hold's TTL) have passed.
FINAL_WRITE_BACKOFF = (0.25, 0.5, 1.0, 2.0)
HELD_BACKOFF = (1.0, 30.0)


@dataclass
class RunningReply:
    message_id: int
    participant_id: int
    text: str = ""
    task: asyncio.Task | None = field(default=None, repr=False)
    replica: str = ""  # the base URL streaming (or last tried)
    abandoned: bool = False  # cancelled because the participant left or the study closed
    finished: bool = False  # the model is done; the text is kept until the final write lands
    fields: dict | None = field(default=None, repr=False)  # the final write's, once finished
    held: bool = False  # a copy is held in Redis for the sweep


_running: dict[int, RunningReply] = {}


def running_reply(message_id: int) -> RunningReply | None:
    """The reply being generated in this process, if any."""
    return _running.get(message_id)


def running_ids() -> set[int]:
    """Ids of replies this process is generating."""
    return set(_running)


def generation_start(
    *, message_id: int, participant_id: int, plan: GenerationPlan | None = None
) -> RunningReply:
    """Start generating a reply in the background of this process (idempotent per message)."""
    if message_id in _running:
        return _running[message_id]
    reply = RunningReply(message_id, participant_id)
    _running[message_id] = reply
    reply.task = asyncio.get_running_loop().create_task(_generate(reply, plan))
    reply.task.add_done_callback(lambda task: _ended(task, message_id))
    return reply


def _ended(task: asyncio.Task, message_id: int) -> None:
    """Forget the reply; log an error nobody else would see (the task is never awaited)."""
    _running.pop(message_id, None)
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("reply %s ended with an error", message_id, exc_info=error)


class _Busy(Exception):
    """No stream slot came free before BUSY_DEADLINE."""


def _abandon(reply: RunningReply) -> None:
    """Cancel the reply: its participant left for good or its study closed."""
    if reply.task is not None:
        reply.abandoned = True
        reply.task.cancel()


def _start_relay(reply: RunningReply, wake: asyncio.Event) -> list[asyncio.Task]:
    """The relay's loops, each supervised: frames, checkpoints, liveness (in that order)."""
    loops = {
        "frames": lambda: relay.frames(reply, wake),
        "checkpoints": lambda: relay.checkpoints(reply, lambda: _abandon(reply)),
        "liveness": lambda: relay.liveness(reply),
    }
    return [asyncio.create_task(relay.supervise(name, reply, loop)) for name, loop in loops.items()]


async def _generate(reply: RunningReply, plan: GenerationPlan | None) -> None:
    wake = asyncio.Event()
    relayed = _start_relay(reply, wake)
    frames, checkpoints, _ = relayed
    endpoint = plan.endpoint if plan is not None else "unknown"
    try:
        if plan is None:
            plan = await db_call(generation_plan)(message_id=reply.message_id)
        endpoint = plan.endpoint
        async with _stream_slots() as slots:
            with metrics.stream_in_flight(endpoint):
                result = await _stream(reply, plan, slots, wake)
        reply.finished = True
        frames.cancel()
        checkpoints.cancel()
        await _finish(reply, result)
        if result.completion_tokens is None:  # llama.cpp: counted now, the participant has it
            _count_later(reply, plan, result)
        metrics.observe_reply(
            endpoint,
            "completed",
            ttft=result.time_to_first_token,
            itl=result.inter_token_latency,
            tokens=result.completion_tokens,
        )
    except _Busy as exc:
        await _fail(reply, "busy", str(exc), BUSY_MESSAGE)
        metrics.observe_reply(endpoint, "busy")
    except ModelCallError as exc:
        await _fail(reply, exc.kind, exc.detail, exc.user_message())
        metrics.observe_reply(endpoint, exc.kind)
    except asyncio.CancelledError:
        # A finished reply cancelled while its final write waits (a process shutting down) is
        # left streaming, held in Redis (now, if it was not yet) for the next sweep to store.
        if not reply.finished:
            await asyncio.shield(_interrupted(reply))
            metrics.observe_reply(endpoint, "interrupted")
        elif reply.fields is not None and not reply.held:
            reply.held = await asyncio.shield(_hold(reply, reply.fields, announce=False))
        raise
    except Exception as exc:  # a bug must still end the turn visibly, never leave it streaming
        log.exception("reply %s failed", reply.message_id)
        await _fail(reply, "internal", repr(exc), "Something went wrong on our side.")
        metrics.observe_reply(endpoint, "internal")
    finally:
        for task in relayed:
            task.cancel()
        # Wait for them to stop (a liveness mark in flight), or one could renew the key after it
        # is cleared and keep a dead reply from the reaper for a whole TTL.
        await asyncio.shield(asyncio.gather(*relayed, return_exceptions=True))
        await asyncio.shield(relay.liveness_clear(reply.message_id))


_slots: dict[asyncio.AbstractEventLoop, list] = {}


@contextlib.asynccontextmanager
async def _stream_slots() -> AsyncIterator[StreamSlots]:
    """The Redis slots client of this event loop, closed when its last running reply ends."""
    loop = asyncio.get_running_loop()
    entry = _slots.get(loop)
    if entry is None:
        entry = _slots[loop] = [StreamSlots(settings.REDIS_URL, KEY_PREFIX), 0]
    entry[1] += 1
    try:
        yield entry[0]
    finally:
        entry[1] -= 1
        if entry[1] == 0 and _slots.get(loop) is entry:
            del _slots[loop]
            await asyncio.shield(entry[0].aclose())


async def _stream(
    reply: RunningReply, plan: GenerationPlan, slots: StreamSlots, wake: asyncio.Event
) -> GenerationResult:
    """Stream from the least busy replica, moving on to the next only before the first token."""
    tried: set[str] = set()
    while True:
        lease = await _acquire(reply, plan, slots, tried)
        reply.replica = lease.replica_url
        heartbeat = asyncio.create_task(_heartbeat(slots, lease))
        try:
            return await _stream_from(reply, plan, lease.replica_url, wake)
        except ModelCallError as exc:
            tried.add(lease.replica_url)
            if exc.kind == "unreachable":
                await slots.mark_down(plan.endpoint, lease.replica_url, DOWN_COOLDOWN)
            if (
                reply.text
                or exc.kind not in RETRY_BEFORE_FIRST_TOKEN
                or tried >= set(plan.replicas)
            ):
                raise
            log.warning(
                "reply %s: %s failed before text (%s)", reply.message_id, reply.replica, exc
            )
        finally:
            heartbeat.cancel()
            with contextlib.suppress(RedisError):
                await asyncio.shield(slots.release(lease))


async def _acquire(
    reply: RunningReply, plan: GenerationPlan, slots: StreamSlots, tried: set[str]
) -> Lease:
    """Take a slot on the best untried replica, telling the participant while none is free."""
    lease = await _try_acquire(plan, slots, tried)
    if lease is not None:
        return lease
    # All slots are held: wait for a release anywhere (Redis pub/sub), telling the participant.
    give_up, backoff, announce = time.monotonic() + BUSY_DEADLINE, Backoff(*BUSY_BACKOFF), True
    async with slots.waiting(plan.endpoint) as freed:
        while True:
            lease = await _try_acquire(plan, slots, tried)
            if lease is not None:
                return lease
            left = give_up - time.monotonic()
            if left <= 0:
                raise _Busy(f"no free stream slot on {plan.endpoint} within {BUSY_DEADLINE:.0f} s")
            if announce:  # once, and again after each quiet wait: not on every lost race
                frame = {"frame": "busy", "id": reply.message_id, "retry_in": backoff.next}
                await publish(reply.participant_id, frame)
            announce = not await freed(min(backoff.next, left))
            if announce:  # no release: back off (slots freed only by expiry publish nothing)
                backoff.failed()


async def _try_acquire(plan: GenerationPlan, slots: StreamSlots, tried: set[str]) -> Lease | None:
    replicas = plan.replicas or (plan.spec.base_url,)
    url = replicas[0]
    if len(replicas) > 1:  # one replica: no choice to make, so save the round trip
        snapshot = await slots.snapshot(plan.endpoint)
        url = choose_replica(replicas, snapshot.outstanding, snapshot.down, tried) or url
    return await slots.acquire(plan.endpoint, url, plan.max_streams or NO_LIMIT, LEASE_TTL)


async def _heartbeat(slots: StreamSlots, lease: Lease) -> None:
    """Keep the lease alive while the stream runs (a crashed process simply stops renewing)."""
    while True:
        await asyncio.sleep(lease.ttl / 3)
        try:
            if not await slots.renew(lease):
                log.warning("stream lease %s expired before renewal", lease.lease_id)
        except RedisError:
            log.warning("could not renew stream lease %s", lease.lease_id, exc_info=True)


async def _stream_from(
    reply: RunningReply, plan: GenerationPlan, url: str, wake: asyncio.Event
) -> GenerationResult:
    result: GenerationResult | None = None
    spec = replace(plan.spec, base_url=url)
    async with aclosing(stream_chat(spec, plan.messages, plan.params, count=False)) as stream:
        async for item in stream:
            if isinstance(item, GenerationResult):
                result = item
            elif item:
                reply.text += item
                wake.set()
    if result is None:
        raise ModelCallError("malformed_stream", "the stream ended without a result")
    return result


async def _finish(reply: RunningReply, result: GenerationResult) -> None:
    """Store the finished reply, however long the database takes, and tell the participant."""
    fields = {
        "message_id": reply.message_id,
        "text": result.text,
        "model": result.model,
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "time_to_first_token": result.time_to_first_token,
        "duration": result.duration,
        "usage_source": result.usage_source,
        "inter_token_latency": result.inter_token_latency,
        "endpoint_url": reply.replica,
    }
    frame = await _write_final(reply, fields)
    if frame is not None:
        await publish(reply.participant_id, {"frame": "complete", **frame})


_counting: set[asyncio.Task] = set()


def _count_later(reply: RunningReply, plan: GenerationPlan, result: GenerationResult) -> None:
    """Count a stored reply's tokens with the server's tokenizer in the background.

    A stream without usage (llama.cpp) is counted only after its slot is released and its
    complete frame is sent: the count waits in the server's queue behind other generations, and
    nobody waits for it. The row keeps usage_source "none" until the counts are recorded.
    """
    spec = replace(plan.spec, base_url=reply.replica or plan.spec.base_url)
    task = asyncio.get_running_loop().create_task(
        _count(reply.message_id, spec, plan.messages, result)
    )
    _counting.add(task)
    task.add_done_callback(functools.partial(_counted, reply.message_id))


def counting() -> int:
    """Token counts of stored replies still running in the background of this process."""
    return len(_counting)


def _counted(message_id: int, task: asyncio.Task) -> None:
    _counting.discard(task)
    if task.cancelled():  # the process is stopping: the row keeps usage_source "none"
        log.warning("reply %s: its token counts were not recorded (cancelled)", message_id)
    elif (error := task.exception()) is not None:
        log.error("counting the tokens of reply %s failed", message_id, exc_info=error)


async def _count(
    message_id: int, spec: EndpointSpec, messages: list[dict[str, str]], result: GenerationResult
) -> None:
    counted = await count_tokens(spec, messages, result)
    if counted.usage_source != "tokenize":
        return
    with contextlib.suppress(DatabaseError):  # logged and counted by _retrying; counts only
        await _retrying(
            lambda: db_call(turns.turn_usage_record)(
                message_id=message_id,
                prompt_tokens=counted.prompt_tokens,
                completion_tokens=counted.completion_tokens,
                usage_source=counted.usage_source,
            ),
            what="token counts",
            message_id=message_id,
        )


async def _store(fields: dict, *, held: bool = False) -> dict | None:
    """One try of the final write: the frame that tells the participant, or None for none.

    Raises DatabaseError when the database refused. A reply already stored (by the sweep that
    drains held replies) or ended meanwhile (reaped, interrupted) gets the frame of its stored
    row; one whose row is gone (an erased participant) or that finished too late gets none.
    """
    message_id = fields["message_id"]
    try:
        try:
            outcome = await db_call(turns.turn_complete)(**fields, held=held)
        except StudyActionError as exc:
            log.warning("reply %s finished but was not stored: %s", message_id, exc.code)
            message = await db_call(Message.objects.get)(pk=message_id)
            return {"message": message_frame(message)}
    except Message.DoesNotExist:
        log.error("reply %s finished but its row is gone; text dropped", message_id)
        return None
    if outcome.superseded:
        log.info("reply %s finished too late to count; text kept", message_id)
        return None
    # Everything the page needs after a reply (it asks for no whole chat): the stored message
    # with its HTML, rendered once at completion, and the participant's counters.
    return {
        "message": message_frame(outcome.message),
        "completed_turns": outcome.completed_turns,
        "rating_due": outcome.rating_due_after,
        "status": outcome.status,
        "continuable": outcome.continuable,
    }


async def _retrying(write: Callable[[], Awaitable[T]], *, what: str, message_id: int) -> T:
    """Run `write`, again after each FINAL_WRITE_BACKOFF wait while the database refuses.

    Each refusal is logged and counted; the last one is raised.
    """
    waits = iter(FINAL_WRITE_BACKOFF)
    while True:
        try:
            return await write()
        except DatabaseError:
            metrics.relay_errors_total.labels("final_write").inc()
            log.warning("%s of reply %s failed", what, message_id, exc_info=True)
            wait = next(waits, None)
            if wait is None:
                raise
            await asyncio.sleep(wait)


async def _write_final(reply: RunningReply, fields: dict) -> dict | None:
    """Retry the final write with backoff; then hold the reply in Redis and keep trying.

    The text stays in this process (RunningReply.fields) until a write is confirmed, and the
    liveness key keeps being renewed, so the reaper leaves the row alone meanwhile. After
    CHAT_HOLD_SECONDS (when the held copy expires too) the process gives up, loudly.
    """
    reply.fields = fields
    with contextlib.suppress(DatabaseError):
        return await _retrying(
            lambda: _store(fields), what="final write", message_id=reply.message_id
        )
    reply.held = await _hold(reply, fields)
    give_up = time.monotonic() + settings.CHAT_HOLD_SECONDS
    backoff = Backoff(*HELD_BACKOFF)
    while (left := give_up - time.monotonic()) > 0:
        await asyncio.sleep(min(backoff.failed(), left))
        reply.held = reply.held or await _hold(reply, fields, announce=False)
        try:
            frame = await _store(fields, held=reply.held)
        except DatabaseError:
            metrics.relay_errors_total.labels("final_write").inc()
            log.warning("finished reply %s still not stored", reply.message_id, exc_info=True)
            continue
        if reply.held:
            with contextlib.suppress(RedisError):  # a hold left behind is dropped by the sweep
                await asyncio.to_thread(inflight.held_drop, reply.message_id, reply.participant_id)
        return frame
    metrics.relay_errors_total.labels("final_write_gave_up").inc()
    log.error(
        "reply %s: the database stayed away for %s s; gave up storing its %d characters",
        reply.message_id,
        settings.CHAT_HOLD_SECONDS,
        len(fields["text"]),
    )
    return None


async def _hold(reply: RunningReply, fields: dict, *, announce: bool = True) -> bool:
    """Hold the finished reply in Redis for whichever process reaches the database first.

    The "saving" frame says whether the copy is held, or only in this process's memory.
    """
    held = True
    try:
        record = {**fields, "participant_id": reply.participant_id}
        await asyncio.to_thread(inflight.held_put, reply.message_id, record)
        metrics.replies_held_total.inc()
    except RedisError:
        metrics.relay_errors_total.labels("hold").inc()
        log.warning("could not hold reply %s in Redis", reply.message_id, exc_info=True)
        held = False
    if announce:
        frame = {"frame": "saving", "id": reply.message_id, "text": fields["text"], "held": held}
        await publish(reply.participant_id, frame)
    return held


async def _end(**fields: Any) -> None:
    """turn_fail, retried like the final write; if the database stays away, the reaper ends it."""
    message_id = fields["message_id"]
    assert isinstance(message_id, int)
    with contextlib.suppress(DatabaseError):
        await _retrying(
            lambda: db_call(turns.turn_fail)(**fields),
            what="ending",
            message_id=message_id,
        )


async def _fail(reply: RunningReply, kind: str, detail: str, user_message: str) -> None:
    await _end(
        message_id=reply.message_id,
        text=reply.text,
        kind=kind,
        detail=detail,
        endpoint_url=reply.replica,
    )
    await publish(
        reply.participant_id,
        {
            "frame": "failed",
            "id": reply.message_id,
            "error": kind,
            "text": reply.text,
            "message": user_message,
        },
    )


async def _interrupted(reply: RunningReply) -> None:
    await _end(
        message_id=reply.message_id,
        text=reply.text,
        kind="abandoned" if reply.abandoned else "interrupted",
        detail="participant left or study closed; upstream request cancelled"
        if reply.abandoned
        else "generation was cancelled",
        interrupted=True,
        endpoint_url=reply.replica,
    )
    await publish(
        reply.participant_id,
        {
            "frame": "failed",
            "id": reply.message_id,
            "error": "interrupted",
            "text": reply.text,
            "message": "The reply was interrupted. You can retry it.",
        },
    )
