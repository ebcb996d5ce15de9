"""The finished reply's last steps: held on shutdown, errors other than the database's, a bounded
wait for the database, no liveness mark after the end, and a socket that outlives a layer blip.

Real PostgreSQL and Redis; faults are injected at the service seams (turn_complete, the held
copy, the channel layer) and the model is the fake at the client seam.
"""

import asyncio
import logging
import threading
import uuid

import pytest
from channels.db import database_sync_to_async as sync_to_async
from channels.layers import get_channel_layer
from redis.exceptions import ConnectionError as RedisConnectionError

from studies.models import Event, Message
from studies.services import generation, inflight, turns
from tests.studies.test_consumer import frames_until, messages_of, open_chat, send_turn, settled
from tests.studies.test_generation_routing import chat, make_participants
from tests.studies.test_relay_faults import Database

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


@pytest.fixture(autouse=True)
def _own_keys(monkeypatch) -> None:
    """Stream slots, liveness keys and held replies under key prefixes of this test's own."""
    monkeypatch.setattr(generation, "KEY_PREFIX", f"test-gen-{uuid.uuid4().hex}")
    monkeypatch.setattr(inflight, "KEY_PREFIX", f"test-replies-{uuid.uuid4().hex}")


async def until(condition, what: str) -> None:
    """Wait (a bounded number of short sleeps) until `condition()` holds."""
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"never happened: {what}")


async def test_a_finished_reply_cancelled_before_it_is_held_is_held_for_the_sweep(
    fake_model, monkeypatch
):
    monkeypatch.setattr(generation, "FINAL_WRITE_BACKOFF", (60.0,))  # stopped in this wait
    (participant,) = await make_participants([fake_model.base_url])
    comm = await chat(participant)
    database = Database(turns.turn_complete)
    monkeypatch.setattr(turns, "turn_complete", database.turn_complete)
    await send_turn(comm)
    pk = (await frames_until(comm, {"started"}))[-1]["message"]["id"]
    await until(lambda: database.refused, "the final write was refused")
    reply = generation.running_reply(pk)
    assert reply is not None and reply.task is not None and reply.text
    reply.task.cancel()  # the process shuts down
    await settled()
    held = await sync_to_async(inflight.held_get)(pk)
    assert held is not None and held["text"] == reply.text
    database.up = True
    assert await sync_to_async(turns.turn_store_held)() == [pk]
    message = await Message.objects.aget(pk=pk)
    assert message.status == "complete" and message.content == reply.text
    await comm.disconnect()


async def test_a_reply_ended_elsewhere_before_its_final_write_shows_its_stored_row(
    fake_model, monkeypatch, caplog
):
    (participant,) = await make_participants([fake_model.base_url])
    comm = await chat(participant)
    real = turns.turn_complete

    def ended_meanwhile(**fields):
        turns.turn_fail(
            message_id=fields["message_id"], text="part of it", kind="interrupted",
            detail="ended by another process", interrupted=True,
        )  # fmt: skip
        return real(**fields)

    monkeypatch.setattr(turns, "turn_complete", ended_meanwhile)
    await send_turn(comm)
    final = (await frames_until(comm, {"complete", "failed"}))[-1]
    assert final["type"] == "complete"
    assert final["message"]["status"] == "interrupted" and final["message"]["text"] == "part of it"
    await settled()
    _, reply = await messages_of(participant)
    assert (reply.status, reply.error_kind) == ("interrupted", "interrupted")
    assert "not_streaming" in caplog.text
    await comm.disconnect()


async def test_a_reply_whose_row_is_gone_is_logged_and_not_failed(fake_model, monkeypatch, caplog):
    (participant,) = await make_participants([fake_model.base_url])
    comm = await chat(participant)

    def erased(**fields):
        raise Message.DoesNotExist("the participant was erased")

    monkeypatch.setattr(turns, "turn_complete", erased)
    with caplog.at_level(logging.ERROR, logger="studies.services.generation"):
        await send_turn(comm)
        await frames_until(comm, {"started"})
        await settled()
    _, reply = await messages_of(participant)
    assert reply.status == "streaming" and reply.error_kind == ""  # not "internal"
    assert "row is gone" in caplog.text
    await comm.disconnect()


async def test_an_error_while_ending_a_failed_reply_is_logged(fake_model, monkeypatch, caplog):
    _, comm = await open_chat(fake_model.base_url, model="fake-400")

    async def broken(*args, **kwargs):
        raise RuntimeError("a bug while failing the turn")

    monkeypatch.setattr(generation, "_fail", broken)
    with caplog.at_level(logging.ERROR, logger="studies.services.generation"):
        await send_turn(comm)
        pk = (await frames_until(comm, {"started"}))[-1]["message"]["id"]
        await settled()
    logged = [r for r in caplog.records if r.getMessage() == f"reply {pk} ended with an error"]
    assert logged and "a bug while failing the turn" in str(logged[0].exc_info[1])
    await comm.disconnect()


async def test_a_reply_that_redis_could_not_hold_says_so_and_is_stored_unheld(
    fake_model, monkeypatch
):
    monkeypatch.setattr(generation, "FINAL_WRITE_BACKOFF", (0.05,))
    monkeypatch.setattr(generation, "HELD_BACKOFF", (0.1, 0.1))
    (participant,) = await make_participants([fake_model.base_url])
    comm = await chat(participant)
    database = Database(turns.turn_complete)
    monkeypatch.setattr(turns, "turn_complete", database.turn_complete)

    def redis_away(*args):
        raise RedisConnectionError("Redis is away too")

    monkeypatch.setattr(inflight, "held_put", redis_away)
    await send_turn(comm)
    saving = (await frames_until(comm, {"saving", "complete", "failed"}))[-1]
    assert saving["type"] == "saving" and saving["held"] is False and saving["text"]
    database.up = True
    final = (await frames_until(comm, {"complete", "failed"}))[-1]
    assert final["type"] == "complete" and final["message"]["text"] == saving["text"]
    await settled()
    _, reply = await messages_of(participant)
    completed = Event.objects.filter(kind="study.turn.completed", payload__reply=reply.pk)
    assert [e.payload.get("held") async for e in completed] == [None]


async def test_a_held_reply_stops_retrying_when_its_hold_expires(
    fake_model, settings, monkeypatch, caplog
):
    settings.CHAT_HOLD_SECONDS = 1
    monkeypatch.setattr(generation, "FINAL_WRITE_BACKOFF", (0.05,))
    monkeypatch.setattr(generation, "HELD_BACKOFF", (0.2, 0.2))
    (participant,) = await make_participants([fake_model.base_url])
    comm = await chat(participant)
    database = Database(turns.turn_complete)
    monkeypatch.setattr(turns, "turn_complete", database.turn_complete)
    await send_turn(comm)
    saving = (await frames_until(comm, {"saving", "complete", "failed"}))[-1]
    assert saving["type"] == "saving"
    with caplog.at_level(logging.ERROR, logger="studies.services.generation"):
        await settled()  # the database never came back; the process gave up
    assert "gave up storing" in caplog.text and database.refused > 2
    await comm.disconnect()


async def test_a_liveness_mark_in_flight_when_the_reply_ends_does_not_outlive_it(
    fake_model, monkeypatch
):
    release, marks = threading.Event(), []
    real = inflight.alive_mark

    def slow_mark(message_id: int) -> None:
        if not marks:  # the first mark is still on its way to Redis when the reply ends
            marks.append("waiting")
            release.wait(10)
        real(message_id)
        marks.append("done")

    monkeypatch.setattr(inflight, "alive_mark", slow_mark)
    (participant,) = await make_participants([fake_model.base_url])
    comm = await chat(participant)
    await send_turn(comm)
    final = (await frames_until(comm, {"complete", "failed"}))[-1]
    assert final["type"] == "complete" and marks == ["waiting"]
    release.set()
    await settled()
    await until(lambda: "done" in marks, "the slow mark landed")
    assert await sync_to_async(inflight.alive_among)([final["message"]["id"]]) == set()
    await comm.disconnect()


def _fail_once_on(monkeypatch, frame: str) -> list[dict]:
    """Make the channel layer's group_send raise once for `frame`; the list records it."""
    layer, failed = get_channel_layer(), []
    real_send = layer.group_send

    async def flaky(group, message):
        if message.get("frame") == frame and not failed:
            failed.append(message)
            raise RedisConnectionError("Redis blinked")
        await real_send(group, message)

    monkeypatch.setattr(layer, "group_send", flaky)
    return failed


async def test_a_channel_layer_blip_on_the_started_frame_keeps_the_socket(fake_model, monkeypatch):
    (participant,) = await make_participants([fake_model.base_url])
    comm = await chat(participant)
    failed = _fail_once_on(monkeypatch, "started")
    await send_turn(comm)
    frames = await frames_until(comm, {"complete", "failed"})
    complete = frames[-1]
    assert failed and complete["type"] == "complete"
    if "started" not in [f["type"] for f in frames]:  # sent again after a backoff: may be last
        frames += await frames_until(comm, {"started"})
    assert frames[0]["type"] == "ack"
    await settled()
    _, reply = await messages_of(participant)
    assert reply.status == "complete" and reply.content == complete["message"]["text"]
    await comm.disconnect()


async def test_a_channel_layer_blip_on_the_rated_frame_keeps_the_socket(fake_model, monkeypatch):
    _, comm = await open_chat(fake_model.base_url, rating_every=1)
    await send_turn(comm)
    assert (await frames_until(comm, {"complete"}))[-1]["rating_due"] == 1
    await settled()
    failed = _fail_once_on(monkeypatch, "rated")
    await comm.send_json_to({"type": "rating", "after_turn": 1, "score": 8})
    state = (await frames_until(comm, {"state"}))[-1]
    assert failed and state["rating_due"] is None and state["status"] == "chatting"
    await comm.send_json_to({"type": "sync"})  # the socket is still open and answering
    assert (await frames_until(comm, {"state"}))[-1]["status"] == "chatting"
    await comm.disconnect()
