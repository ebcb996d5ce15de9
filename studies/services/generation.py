"""Generating a reply: owned by the turn, not by the socket that asked for it.

`generation_start` runs the reply as a task of the web process. Deltas are coalesced into frames
(at most one per CHAT_FRAME_INTERVAL) and published to the participant's channel-layer group, so a
socket on any web process can follow. The partial text is checkpointed every
CHAT_CHECKPOINT_INTERVAL; those frames also carry the whole text so a socket that joined late heals
any gap. The finished reply is written once.
"""

import asyncio
import contextlib
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass, field

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from models_serving.client import GenerationResult, ModelCallError, stream_chat
from studies.selectors import GenerationPlan, generation_plan, message_frame
from studies.services import turns

log = logging.getLogger(__name__)


def chat_group(participant_id: int) -> str:
    """The channel-layer group every socket of one participant joins."""
    return f"chat.{participant_id}"


@dataclass
class RunningReply:
    message_id: int
    participant_id: int
    text: str = ""
    task: asyncio.Task | None = field(default=None, repr=False)


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
    reply.task.add_done_callback(lambda _: _running.pop(message_id, None))
    return reply


async def _publish(participant_id: int, frame: dict) -> None:
    await get_channel_layer().group_send(
        chat_group(participant_id), {"type": "chat.frame", **frame}
    )


async def _relay(reply: RunningReply, wake: asyncio.Event) -> None:
    """Publish new text at most once per frame interval; checkpoint it every few seconds.

    The first delta goes out at once (leading edge); text that arrives just after a frame waits
    at most one interval. The checkpoint also runs while no text arrives (a slow first token), so
    the row's updated_at shows other processes that this reply is alive.
    """
    sent, last_checkpoint = 0, time.monotonic()
    interval = settings.CHAT_CHECKPOINT_INTERVAL
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):  # no extra task per frame, unlike wait_for
                await wake.wait()
        due = time.monotonic() - last_checkpoint >= interval
        if wake.is_set():
            wake.clear()
            frame = {"frame": "delta", "id": reply.message_id, "start": sent}
            frame["delta"], sent = reply.text[sent:], len(reply.text)
            if due:
                frame["full"] = reply.text[:sent]
            await _publish(reply.participant_id, frame)
        if due:
            last_checkpoint = time.monotonic()
            await database_sync_to_async(turns.turn_checkpoint)(
                message_id=reply.message_id, text=reply.text[:sent]
            )
        await asyncio.sleep(settings.CHAT_FRAME_INTERVAL)


async def _generate(reply: RunningReply, plan: GenerationPlan | None) -> None:
    result: GenerationResult | None = None
    wake = asyncio.Event()
    relay = asyncio.create_task(_relay(reply, wake))
    try:
        if plan is None:
            plan = await database_sync_to_async(generation_plan)(message_id=reply.message_id)
        async with aclosing(stream_chat(plan.spec, plan.messages, plan.params)) as stream:
            async for item in stream:
                if isinstance(item, GenerationResult):
                    result = item
                elif item:
                    reply.text += item
                    wake.set()
        relay.cancel()
        if result is None:
            raise ModelCallError("malformed_stream", "the stream ended without a result")
        await _finish(reply, result)
    except ModelCallError as exc:
        await _fail(reply, exc.kind, exc.detail, exc.user_message())
    except asyncio.CancelledError:
        await asyncio.shield(_interrupted(reply))
        raise
    except Exception as exc:  # a bug must still end the turn visibly, never leave it streaming
        log.exception("reply %s failed", reply.message_id)
        await _fail(reply, "internal", repr(exc), "Something went wrong on our side.")
    finally:
        relay.cancel()


async def _finish(reply: RunningReply, result: GenerationResult) -> None:
    outcome = await database_sync_to_async(turns.turn_complete)(
        message_id=reply.message_id,
        text=result.text,
        model=result.model,
        finish_reason=result.finish_reason,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        time_to_first_token=result.time_to_first_token,
        duration=result.duration,
        usage_source=result.usage_source,
    )
    await _publish(
        reply.participant_id,
        {
            "frame": "complete",
            "message": message_frame(outcome.message),
            "completed_turns": outcome.completed_turns,
            "rating_due": outcome.rating_due_after,
        },
    )


async def _fail(reply: RunningReply, kind: str, detail: str, user_message: str) -> None:
    await database_sync_to_async(turns.turn_fail)(
        message_id=reply.message_id, text=reply.text, kind=kind, detail=detail
    )
    await _publish(
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
    await database_sync_to_async(turns.turn_fail)(
        message_id=reply.message_id,
        text=reply.text,
        kind="interrupted",
        detail="generation was cancelled",
        interrupted=True,
    )
    await _publish(
        reply.participant_id,
        {
            "frame": "failed",
            "id": reply.message_id,
            "error": "interrupted",
            "text": reply.text,
            "message": "The reply was interrupted. You can retry it.",
        },
    )
