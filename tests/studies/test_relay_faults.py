"""A running reply rides out Redis and PostgreSQL blips: nothing the participant saw is lost.

Faults are injected at the seams (the channel layer's group_send, the checkpoint and final-write
services) on real PostgreSQL and Redis; the model is the fake at the client seam.
"""

import asyncio
import uuid
from collections.abc import Callable

import pytest
from channels.db import database_sync_to_async as sync_to_async
from channels.layers import get_channel_layer
from django.db import OperationalError
from django.db.backends.signals import connection_created
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError

from studies import tasks
from studies.models import Event, Message
from studies.services import generation, inflight, relay, turns
from studies.services.deltas import delta_apply
from tests.studies.test_consumer import frames_until, messages_of, send_turn, settled
from tests.studies.test_generation_routing import SLOW, chat, make_participants

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

LONG = {"max_tokens": 24, "fake_delay_ms": 120}  # about 3 s of streaming


@pytest.fixture(autouse=True)
def _own_keys(monkeypatch) -> None:
    """Stream slots, liveness keys and held replies under key prefixes of this test's own."""
    monkeypatch.setattr(generation, "KEY_PREFIX", f"test-gen-{uuid.uuid4().hex}")
    monkeypatch.setattr(inflight, "KEY_PREFIX", f"test-replies-{uuid.uuid4().hex}")


def counted(step: str) -> float:
    return REGISTRY.get_sample_value("collabllm_relay_errors_total", {"step": step}) or 0.0


def failing(real: Callable, times: int, error: Exception, calls: list) -> Callable:
    """Wrap a service so its first `times` calls raise `error`; every call's outcome is logged."""

    def wrapper(**kwargs):
        if len([c for c in calls if c == "raised"]) < times:
            calls.append("raised")
            raise error
        result = real(**kwargs)
        calls.append(result)
        return result

    return wrapper


def text_from(frames: list[dict]) -> str:
    """The reply as a page rebuilds it from delta frames."""
    text = ""
    for f in frames:
        if f["type"] == "delta":
            applied = delta_apply(text, f)
            text = text if applied is None else applied  # None: a gap
    return text


async def test_frames_resume_after_the_channel_layer_fails(slow_fake_model, settings, monkeypatch):
    settings.CHAT_CHECKPOINT_INTERVAL = 0.3
    (participant,) = await make_participants([slow_fake_model.base_url], params=LONG)
    comm = await chat(participant)
    layer = get_channel_layer()
    real_send, failed = layer.group_send, []

    async def flaky(group, message):
        if message.get("frame") == "delta" and len(failed) < 3:
            failed.append(message)
            raise RedisConnectionError("Redis blinked")
        await real_send(group, message)

    monkeypatch.setattr(layer, "group_send", flaky)
    before = counted("publish")
    await send_turn(comm)
    frames = await frames_until(comm, {"complete", "failed"})
    final = frames[-1]
    assert final["type"] == "complete" and len(failed) == 3
    deltas = [f for f in frames if f["type"] == "delta"]
    assert deltas, "no frame reached the socket after the blip"
    assert final["message"]["text"].startswith(text_from(frames)) and text_from(frames)
    assert counted("publish") - before == 3
    await settled()
    _, reply = await messages_of(participant)
    assert reply.status == "complete" and reply.content == final["message"]["text"]
    await comm.disconnect()


async def test_checkpoints_resume_after_database_errors(slow_fake_model, settings, monkeypatch):
    settings.CHAT_CHECKPOINT_INTERVAL = 0.2
    (participant,) = await make_participants([slow_fake_model.base_url], params=LONG)
    comm = await chat(participant)
    calls: list = []
    blip = OperationalError("server closed the connection unexpectedly")
    monkeypatch.setattr(turns, "turn_checkpoint", failing(turns.turn_checkpoint, 2, blip, calls))
    before = counted("checkpoint")
    await send_turn(comm)
    frames = await frames_until(comm, {"complete", "failed"})
    assert frames[-1]["type"] == "complete"
    assert calls[:2] == ["raised", "raised"] and True in calls[2:]
    assert counted("checkpoint") - before == 2
    assert [f for f in frames if f["type"] == "delta" and "full" in f]
    await settled()
    _, reply = await messages_of(participant)
    assert reply.status == "complete" and reply.content == frames[-1]["message"]["text"]
    await comm.disconnect()


async def test_a_reply_whose_checkpoints_keep_failing_is_not_reaped_while_its_process_lives(
    slow_fake_model, settings, monkeypatch
):
    settings.CHAT_CHECKPOINT_INTERVAL = 0.2
    settings.CHAT_STALE_STREAM_SECONDS = 2.0
    settings.CHAT_ALIVE_SECONDS = 1.0  # the wait below outlasts the first mark: renewals count
    params = {"max_tokens": 50, "fake_delay_ms": 120}  # about 6 s of streaming
    (participant,) = await make_participants([slow_fake_model.base_url], params=params)
    comm = await chat(participant)
    calls: list = []
    blip = OperationalError("the database is away")
    monkeypatch.setattr(
        turns, "turn_checkpoint", failing(turns.turn_checkpoint, 10_000, blip, calls)
    )
    await send_turn(comm)
    await frames_until(comm, {"delta"})
    await asyncio.sleep(2.5)  # past the stale bound, with every checkpoint failing
    reaped = await sync_to_async(tasks.reap_stale_replies)()  # the beat task: another process
    assert reaped == 0
    frames = await frames_until(comm, {"complete", "failed"})
    assert frames[-1]["type"] == "complete"
    await settled()
    _, reply = await messages_of(participant)
    assert reply.status == "complete" and reply.content == frames[-1]["message"]["text"]
    assert reply.content and "raised" in calls
    await comm.disconnect()


async def test_a_final_write_failing_a_few_times_is_retried_and_stored(
    fake_model, settings, monkeypatch
):
    backoff = (0.05, 0.05, 0.05, 0.05)
    monkeypatch.setattr(generation, "FINAL_WRITE_BACKOFF", backoff)
    (participant,) = await make_participants([fake_model.base_url])
    comm = await chat(participant)
    calls: list = []
    blip = OperationalError("could not connect to server")
    monkeypatch.setattr(turns, "turn_complete", failing(turns.turn_complete, 3, blip, calls))
    before = counted("final_write")
    await send_turn(comm)
    frames = await frames_until(comm, {"complete", "failed"})
    assert frames[-1]["type"] == "complete" and calls.count("raised") == 3
    assert counted("final_write") - before == 3
    await settled()
    _, reply = await messages_of(participant)
    assert reply.status == "complete" and reply.content == frames[-1]["message"]["text"]
    assert reply.content
    await comm.disconnect()


class Database:
    """turn_complete as seen while PostgreSQL is down (`up` False) or back."""

    def __init__(self, real: Callable) -> None:
        self.real, self.up, self.refused = real, False, 0

    def turn_complete(self, **kwargs):
        if not self.up:
            self.refused += 1
            raise OperationalError("connection refused")
        return self.real(**kwargs)


async def test_a_final_write_failing_for_good_is_held_in_redis_and_stored_once_by_the_drain(
    fake_model, monkeypatch
):
    monkeypatch.setattr(generation, "FINAL_WRITE_BACKOFF", (0.05, 0.05))
    monkeypatch.setattr(generation, "HELD_BACKOFF", (0.3, 0.3))
    (participant,) = await make_participants([fake_model.base_url])
    comm = await chat(participant)
    database = Database(turns.turn_complete)
    monkeypatch.setattr(turns, "turn_complete", database.turn_complete)
    await send_turn(comm)
    frames = await frames_until(comm, {"saving", "complete", "failed"})
    saving = frames[-1]
    assert saving["type"] == "saving" and saving["text"]
    held = await sync_to_async(inflight.held_get)(saving["id"])
    assert held is not None and held["text"] == saving["text"]
    assert await sync_to_async(turns.turn_store_held)() == []  # still down: kept
    database.up = True
    assert await sync_to_async(turns.turn_store_held)() == [saving["id"]]
    final = (await frames_until(comm, {"complete", "failed"}))[-1]
    assert final["type"] == "complete" and final["message"]["text"] == saving["text"]
    await settled()
    assert await sync_to_async(turns.turn_store_held)() == []
    assert await sync_to_async(inflight.held_get)(saving["id"]) is None
    _, reply = await messages_of(participant)
    assert reply.status == "complete" and reply.content == saving["text"]
    completed = Event.objects.filter(kind="study.turn.completed", payload__reply=reply.pk)
    assert [e.payload.get("held") async for e in completed] == [True]
    await comm.disconnect()


class Outage:
    """Every SQL statement of the database threads fails while `down`: PostgreSQL is away."""

    def __init__(self) -> None:
        self.down, self.refused = False, 0

    def __call__(self, execute, sql, params, many, context):
        if self.down:
            self.refused += 1
            raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)


@pytest.fixture
async def outage():
    """An execute wrapper on every connection the replies' database threads open meanwhile.

    Their calls run on several threads, each opening a connection per call (studies.services.db).
    """
    fault, wrapped = Outage(), []

    def wrap(sender, connection, **kwargs) -> None:
        if fault not in connection.execute_wrappers:
            connection.execute_wrappers.append(fault)
            wrapped.append(connection)

    connection_created.connect(wrap)
    yield fault
    connection_created.disconnect(wrap)
    fault.down = False
    for each in wrapped:
        each.execute_wrappers.remove(fault)


async def test_a_reply_outlives_a_database_outage_from_mid_stream_to_after_its_end(
    slow_fake_model, settings, monkeypatch, outage
):
    settings.CHAT_CHECKPOINT_INTERVAL = 0.2
    monkeypatch.setattr(generation, "FINAL_WRITE_BACKOFF", (0.05, 0.1))
    monkeypatch.setattr(generation, "HELD_BACKOFF", (0.2, 0.2))
    (participant,) = await make_participants([slow_fake_model.base_url], params=SLOW)
    comm = await chat(participant)
    before = counted("checkpoint")
    await send_turn(comm)
    await frames_until(comm, {"delta"})
    outage.down = True
    saving = (await frames_until(comm, {"saving", "complete", "failed"}))[-1]
    assert saving["type"] == "saving" and saving["text"]
    assert counted("checkpoint") > before and outage.refused
    held = await sync_to_async(inflight.held_get)(saving["id"])
    assert held is not None and held["text"] == saving["text"]
    outage.down = False
    final = (await frames_until(comm, {"complete", "failed"}))[-1]
    assert final["type"] == "complete" and final["message"]["text"] == saving["text"]
    await settled()
    _, reply = await messages_of(participant)
    assert reply.status == "complete" and reply.content == saving["text"]
    assert await sync_to_async(inflight.held_get)(saving["id"]) is None
    await comm.disconnect()


async def test_a_held_reply_of_a_process_that_died_is_stored_by_the_sweep(fake_model, settings):
    settings.CHAT_STALE_STREAM_SECONDS = 0.5
    (participant,) = await make_participants([fake_model.base_url], params=SLOW)

    @sync_to_async
    def held_by_a_dead_process() -> Message:
        started = turns.turn_start(participant_id=participant.pk, text="Help me", key=uuid.uuid4())
        reply = started.assistant_message
        Message.objects.filter(pk=reply.pk).update(content="Sure, here is")
        record = dict(
            message_id=reply.pk, participant_id=participant.pk, text="Sure, here is a plan.",
            model="m", finish_reason="stop", prompt_tokens=5, completion_tokens=6,
            time_to_first_token=0.1, duration=0.5, usage_source="stream",
            inter_token_latency=0.05, endpoint_url="",
        )  # fmt: skip
        inflight.held_put(reply.pk, record)
        return reply

    reply = await held_by_a_dead_process()
    await asyncio.sleep(0.7)  # its row is stale and its liveness key long gone
    assert await sync_to_async(tasks.reap_stale_replies)() == 0
    await reply.arefresh_from_db()
    assert reply.status == "complete" and reply.content == "Sure, here is a plan."


async def test_a_relay_loop_that_crashes_is_restarted(slow_fake_model, settings, monkeypatch):
    real, crashes = relay.frames, []

    async def crashing(reply, wake):
        if not crashes:
            crashes.append(reply.message_id)
            raise RuntimeError("a bug in the relay")
        await real(reply, wake)

    monkeypatch.setattr(relay, "frames", crashing)
    restarts = REGISTRY.get_sample_value("collabllm_relay_restarts_total", {"loop": "frames"})
    (participant,) = await make_participants([slow_fake_model.base_url], params=SLOW)
    comm = await chat(participant)
    await send_turn(comm)
    frames = await frames_until(comm, {"complete", "failed"})
    assert crashes and frames[-1]["type"] == "complete"
    assert [f for f in frames if f["type"] == "delta"]
    after = REGISTRY.get_sample_value("collabllm_relay_restarts_total", {"loop": "frames"})
    assert after == (restarts or 0) + 1
    await settled()
    await comm.disconnect()


async def test_a_redis_restart_mid_stream_loses_no_reply(slow_fake_model, settings, tmp_path):
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path)
    url = server.start()
    try:
        settings.REDIS_URL = url
        settings.CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                "CONFIG": {"hosts": [{"address": url, "socket_timeout": None}]},
            }
        }
        settings.CHAT_CHECKPOINT_INTERVAL = 0.2
        settings.CHAT_STALE_STREAM_SECONDS = 1.0
        params = {"max_tokens": 40, "fake_delay_ms": 120}  # about 5 s of streaming
        (participant,) = await make_participants([slow_fake_model.base_url], params=params)
        comm = await chat(participant)
        before = counted("publish") + counted("liveness")
        await send_turn(comm)
        await frames_until(comm, {"delta"})
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(0.6)
        await asyncio.to_thread(server.start)
        await asyncio.sleep(1.2)  # past the stale bound: a relay that died has stopped checkpoints
        assert await sync_to_async(tasks.reap_stale_replies)() == 0
        frames = await frames_until(comm, {"complete", "failed"})  # the socket resubscribed
        assert frames[-1]["type"] == "complete" and frames[:-1]
        assert frames[-1]["message"]["text"].startswith(text_from(frames))
        await settled()
        assert counted("publish") + counted("liveness") > before
        _, reply = await messages_of(participant)
        assert reply.status == "complete" and reply.completion_tokens == params["max_tokens"]
        assert reply.content == frames[-1]["message"]["text"]
        await comm.disconnect()
    finally:
        await get_channel_layer().flush()
        await asyncio.to_thread(server.stop)
