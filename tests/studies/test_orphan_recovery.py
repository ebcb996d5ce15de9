"""A reply whose web process died is marked interrupted by the participant's own page, in seconds.

The page reconnects when its socket's process dies and sends `sync` when a streaming reply goes
quiet for 5 s; either one ends a reply that no live process runs (its liveness key in Redis
lapsed, its row quiet for CHAT_ALIVE_SECONDS), so the participant gets the retry button without
waiting for the periodic sweep. A reply alive on another process, or finished and held in Redis
for the database, is never ended that way. Real PostgreSQL, Redis channel layer and socket; no
process generates these replies (they are started with the service, as a dead process left them).
"""

import uuid
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async as sync_to_async
from django.utils import timezone

from studies.models import Event, Message
from studies.services import inflight, turns
from tests.studies.conftest import new_key
from tests.studies.test_consumer import connect, make_chatting, settled

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]
M = Message.Status
NOWHERE = "http://127.0.0.1:9/v1"  # no model is called: nothing generates these replies


@pytest.fixture(autouse=True)
def _own_keys(monkeypatch) -> None:
    monkeypatch.setattr(inflight, "KEY_PREFIX", f"test-replies-{uuid.uuid4().hex}")


@sync_to_async
def orphaned_reply(participant, *, quiet_seconds: float) -> Message:
    """A streaming reply with a checkpoint `quiet_seconds` old and no process behind it."""
    reply = turns.turn_start(
        participant_id=participant.pk, text="Help me", key=new_key()
    ).assistant_message
    assert reply is not None
    quiet(reply, quiet_seconds)
    return reply


def quiet(reply: Message, seconds: float) -> None:
    Message.objects.filter(pk=reply.pk).update(
        content="Sure, here", updated_at=timezone.now() - timedelta(seconds=seconds)
    )


async def state_after(comm, frame: dict) -> dict:
    await comm.send_json_to(frame)
    while True:
        answer = await comm.receive_json_from(timeout=10)
        if answer["type"] == "state":
            return answer


def last_reply(state: dict) -> dict:
    return [m for m in state["messages"] if m["role"] == "assistant"][-1]


async def status_of(reply: Message) -> str:
    await reply.arefresh_from_db()
    return reply.status


async def test_a_sync_ends_a_reply_whose_process_died_with_retry(settings):
    participant = await make_chatting(NOWHERE)
    reply = await orphaned_reply(participant, quiet_seconds=0)
    comm, connected, _ = await connect(participant)
    assert connected
    first = await comm.receive_json_from()
    assert last_reply(first)["status"] == "streaming"  # just checkpointed: maybe alive

    await sync_to_async(quiet)(reply, settings.CHAT_ALIVE_SECONDS + 1)  # its process died
    shown = last_reply(await state_after(comm, {"type": "sync"}))

    assert shown["id"] == reply.pk and shown["status"] == "interrupted"
    assert shown["text"] == "Sure, here"  # the checkpointed text stays
    assert await status_of(reply) == M.INTERRUPTED
    await comm.send_json_to({"type": "retry", "message_id": reply.pk})  # the retry button works
    started = await comm.receive_json_from(timeout=10)
    assert started["type"] == "started" and started["message"]["id"] != reply.pk
    assert started["message"]["turn"] == shown["turn"]
    await settled()  # the retry's model call fails at once (no model here)
    await comm.disconnect()


async def test_a_reconnect_ends_a_reply_whose_process_died_without_waiting_for_the_sweep(
    settings,
):
    participant = await make_chatting(NOWHERE)
    quiet_for = settings.CHAT_ALIVE_SECONDS + 1
    assert quiet_for < settings.CHAT_STALE_STREAM_SECONDS  # the sweep would still wait
    reply = await orphaned_reply(participant, quiet_seconds=quiet_for)
    assert await sync_to_async(turns.turn_reap_stale)(participant_id=None, running=set()) == []

    comm, connected, _ = await connect(participant)
    assert connected
    state = await comm.receive_json_from()

    assert last_reply(state)["status"] == "interrupted"
    assert await status_of(reply) == M.INTERRUPTED
    await comm.disconnect()


async def test_a_sync_leaves_a_reply_that_another_live_process_runs(settings):
    participant = await make_chatting(NOWHERE)
    reply = await orphaned_reply(participant, quiet_seconds=0)
    comm, connected, _ = await connect(participant)
    assert connected
    await comm.receive_json_from()

    # Checkpoints failing for a minute (the database away), but the process renews its key.
    await sync_to_async(quiet)(reply, 60)
    await sync_to_async(inflight.alive_mark)(reply.pk)
    shown = last_reply(await state_after(comm, {"type": "sync"}))

    assert shown["status"] == "streaming" and await status_of(reply) == M.STREAMING
    await comm.disconnect()


async def test_a_sync_leaves_a_reply_that_just_started_on_another_process():
    participant = await make_chatting(NOWHERE)
    reply = await orphaned_reply(participant, quiet_seconds=0.5)  # no liveness key yet
    comm, connected, _ = await connect(participant)
    assert connected
    await comm.receive_json_from()

    shown = last_reply(await state_after(comm, {"type": "sync"}))

    assert shown["status"] == "streaming" and await status_of(reply) == M.STREAMING
    await comm.disconnect()


async def test_a_sync_stores_a_finished_reply_held_in_redis_instead_of_ending_it(settings):
    participant = await make_chatting(NOWHERE)
    reply = await orphaned_reply(participant, quiet_seconds=0)
    comm, connected, _ = await connect(participant)
    assert connected
    await comm.receive_json_from()

    # Its process finished it, found the database away, held it in Redis and died.
    record = dict(
        message_id=reply.pk, participant_id=participant.pk, text="Sure, here is the plan.",
        model="m", finish_reason="stop", prompt_tokens=5, completion_tokens=6,
        time_to_first_token=0.1, duration=0.5, usage_source="stream", inter_token_latency=0.05,
        endpoint_url="",
    )  # fmt: skip
    await sync_to_async(inflight.held_put)(reply.pk, record)
    await sync_to_async(quiet)(reply, settings.CHAT_ALIVE_SECONDS + 1)
    shown = last_reply(await state_after(comm, {"type": "sync"}))

    assert shown["status"] == "complete" and shown["text"] == "Sure, here is the plan."
    assert await status_of(reply) == M.COMPLETE
    interrupted = Event.objects.filter(kind="study.turn.interrupted", payload__reply=reply.pk)
    assert not await interrupted.aexists()
    await comm.disconnect()
