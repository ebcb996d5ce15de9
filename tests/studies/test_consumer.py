"""The chat socket end to end: real Postgres, real Redis channel layer, fake or real model."""

import asyncio
import json
import uuid

import pytest
from channels.db import database_sync_to_async as sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore

from studies.models import Event, Message, ModelEndpoint, Participant
from studies.services import generation, versions
from studies.services.deltas import delta_apply
from tests.factories import ParticipantFactory, three_arm_study
from tests.studies.conftest import advance_to_chat

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


def application():
    from webapp.asgi import application

    return application


@sync_to_async
def make_chatting(base_url: str, model: str = "fake", read_timeout: float = 5.0, **study_kwargs):
    endpoint = ModelEndpoint.objects.create(
        name=f"ep-{uuid.uuid4().hex[:6]}",
        base_url=base_url,
        served_model=model,
        read_timeout=read_timeout,
        connect_timeout=2.0,
    )
    study = three_arm_study(endpoint=endpoint, **study_kwargs)
    pid = advance_to_chat(ParticipantFactory(study=study)).pk
    return Participant.objects.select_related("study", "condition").get(pk=pid)


def repin(participant, **arm_changes) -> None:
    """Edit the arms and pin the participant to the resulting version, as if they had consented
    after the edit (turns read arm settings from the participant's version)."""
    participant.study.conditions.update(**arm_changes)
    version = versions.version_publish(participant.study)
    Participant.objects.filter(pk=participant.pk).update(
        version=version, config_version=version.number
    )


@sync_to_async
def session_cookie(participant: Participant) -> bytes:
    session = SessionStore()
    session[f"participant:{participant.study.slug}"] = participant.pk
    session.create()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}".encode()


async def connect(participant, *, origin=b"http://testserver", cookie=None):
    cookie = cookie if cookie is not None else await session_cookie(participant)
    comm = WebsocketCommunicator(
        application(),
        f"/ws/s/{participant.study.slug}/chat/",
        headers=[(b"host", b"testserver"), (b"origin", origin), (b"cookie", cookie)],
    )
    connected, code = await comm.connect(timeout=10)
    return comm, connected, code


async def open_chat(base_url: str, **kwargs):
    """A participant at the chat step with a connected socket past its first state frame."""
    participant = await make_chatting(base_url, **kwargs)
    comm, connected, _ = await connect(participant)
    assert connected
    await comm.receive_json_from()
    return participant, comm


async def frames_until(comm, kinds, wait=30.0):
    """Receive frames until one of `kinds` arrives; return them all."""
    seen = []
    while True:
        frame = await comm.receive_json_from(timeout=wait)
        seen.append(frame)
        if frame["type"] in kinds:
            return seen


async def send_turn(comm, text="Help me write a blog post."):
    key = str(uuid.uuid4())
    await comm.send_json_to({"type": "send", "text": text, "key": key})
    return key


async def settled():
    """Wait for this process's generation tasks to end (token counts after replies too)."""
    for _ in range(200):
        if not generation.running_ids() and not generation.counting():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("generation did not finish")


@sync_to_async
def messages_of(participant):
    return list(Message.objects.filter(participant=participant).order_by("id"))


async def test_a_socket_without_a_participant_session_is_refused(fake_model):
    participant = await make_chatting(fake_model.base_url)
    events = await sync_to_async(Event.objects.count)()
    _, connected, code = await connect(participant, cookie=b"sessionid=forged")
    assert not connected and code == 4403
    assert await sync_to_async(Event.objects.count)() == events
    assert await messages_of(participant) == []


async def test_a_socket_from_another_origin_is_refused(fake_model):
    participant = await make_chatting(fake_model.base_url)
    _, connected, _ = await connect(participant, origin=b"https://evil.example")
    assert not connected


async def test_a_turn_streams_coalesced_frames_and_saves_the_reply_once(fake_model, settings):
    settings.CHAT_FRAME_INTERVAL = 0.05
    participant = await make_chatting(fake_model.base_url)
    comm, connected, _ = await connect(participant)
    assert connected
    state = await comm.receive_json_from()
    assert state["type"] == "state" and state["messages"] == []
    key = await send_turn(comm)
    frames = await frames_until(comm, {"complete", "failed"})
    assert frames[0]["type"] == "ack" and frames[0]["key"] == key
    deltas = [f for f in frames if f["type"] == "delta"]
    final = frames[-1]
    assert final["type"] == "complete"
    text = ""
    for f in deltas:
        applied = delta_apply(text, f)
        text = text if applied is None else applied  # None: a gap
    assert final["message"]["text"].startswith(text) and text
    tokens = participant.condition.generation_params["max_tokens"]  # the fake sends that many
    assert len(deltas) < tokens / 2  # coalesced, not one frame per token
    await settled()
    _, reply = await messages_of(participant)
    assert reply.status == "complete" and reply.content == final["message"]["text"]
    assert reply.completion_tokens == tokens and reply.prompt_tokens > 0
    assert 0 < reply.time_to_first_token <= reply.duration
    await comm.disconnect()


async def test_the_reply_completes_and_is_saved_after_the_socket_drops(fake_model):
    participant, comm = await open_chat(fake_model.base_url)
    await send_turn(comm)
    await frames_until(comm, {"ack"})
    await comm.disconnect()
    await settled()
    _, reply = await messages_of(participant)
    assert reply.status == "complete" and reply.content
    again, _, _ = await connect(participant)
    state = await again.receive_json_from()
    assert [m["status"] for m in state["messages"]] == ["complete", "complete"]
    assert "html" in state["messages"][1]
    await again.disconnect()


async def test_a_reconnect_mid_stream_shows_the_partial_text_then_the_rest_live(slow_fake_model):
    participant, comm = await open_chat(slow_fake_model.base_url)
    await send_turn(comm)
    await frames_until(comm, {"delta"})
    await comm.disconnect()
    again, _, _ = await connect(participant)
    state = await again.receive_json_from()
    streaming = state["messages"][-1]
    assert streaming["status"] == "streaming" and streaming["text"]
    frames = await frames_until(again, {"complete"})
    assert frames[-1]["message"]["text"].startswith(streaming["text"])
    await again.disconnect()
    await settled()


@pytest.mark.parametrize(
    "model,kind",
    [
        ("fake-500", "server_error"),
        ("fake-stall", "timeout"),
        ("fake-malformed", "malformed_stream"),
        ("fake-400", "rejected"),
    ],
)
async def test_a_failed_model_call_ends_the_turn_visibly_and_keeps_the_message(
    fake_model, model, kind
):
    participant, comm = await open_chat(fake_model.base_url, model=model, read_timeout=1.0)
    await send_turn(comm, "Please keep this text")
    frames = await frames_until(comm, {"failed"})
    assert frames[-1]["error"] == kind and frames[-1]["message"]
    await settled()
    user, reply = await messages_of(participant)
    assert user.content == "Please keep this text" and user.status == "complete"
    assert reply.status == "failed" and reply.error_kind == kind
    await comm.disconnect()


async def test_a_dead_model_server_fails_the_turn_and_a_retry_succeeds_once_it_is_back(fake_model):
    participant, comm = await open_chat("http://127.0.0.1:9/v1")
    await send_turn(comm)
    frames = await frames_until(comm, {"failed"})
    assert frames[-1]["error"] == "unreachable"
    await settled()
    await sync_to_async(ModelEndpoint.objects.filter(pk=participant.condition.endpoint_id).update)(
        base_url=fake_model.base_url
    )
    _, failed = await messages_of(participant)
    await comm.send_json_to({"type": "retry", "message_id": failed.pk})
    frames = await frames_until(comm, {"complete", "failed"})
    assert frames[-1]["type"] == "complete"
    await settled()
    rows = await messages_of(participant)
    assert [(m.role, m.attempt, m.status) for m in rows] == [
        ("user", 1, "complete"),
        ("assistant", 1, "failed"),
        ("assistant", 2, "complete"),
    ]
    await comm.disconnect()


@pytest.mark.parametrize(
    "raw,code",
    [
        ("not json", "malformed"),
        ("[1, 2]", "malformed"),
        (json.dumps({"type": "dance"}), "unknown_type"),
        (json.dumps({"type": "send", "text": "hi"}), "malformed"),
        (json.dumps({"type": "send", "text": "hi", "key": "not-a-uuid"}), "malformed"),
        (
            json.dumps({"type": "send", "text": "x" * 20000, "key": str(uuid.uuid4())}),
            "frame_too_large",
        ),
        (json.dumps({"type": "send", "text": "x" * 4001, "key": str(uuid.uuid4())}), "too_long"),
        (json.dumps({"type": "rating", "after_turn": 0, "score": 5}), "no_rating_due"),
        (json.dumps({"type": "retry", "message_id": 1}), "not_retryable"),
        (json.dumps({"type": "presence", "signal": "dancing"}), "malformed"),
    ],
)
async def test_bad_frames_get_a_clear_error_and_change_nothing(fake_model, raw, code):
    participant, comm = await open_chat(fake_model.base_url)
    count = await sync_to_async(Event.objects.count)()
    await comm.send_to(text_data=raw)
    frame = await comm.receive_json_from()
    assert frame["type"] == "error" and frame["code"] == code and frame["message"]
    assert await messages_of(participant) == []
    assert await sync_to_async(Event.objects.count)() == count
    await comm.disconnect()


async def test_a_replayed_send_is_acknowledged_but_stored_once(fake_model):
    participant, comm = await open_chat(fake_model.base_url)
    key = str(uuid.uuid4())
    for _ in range(2):
        await comm.send_json_to({"type": "send", "text": "hello", "key": key})
    frames = await frames_until(comm, {"complete"})
    acks = [f for f in frames if f["type"] == "ack"]
    while len(acks) < 2:
        f = await comm.receive_json_from()
        if f["type"] == "ack":
            acks.append(f)
    assert sorted(a["replayed"] for a in acks) == [False, True]
    await settled()
    assert [m.role for m in await messages_of(participant)] == ["user", "assistant"]
    await comm.disconnect()


async def test_the_scheduled_rating_blocks_the_composer_until_sent(fake_model):
    _, comm = await open_chat(fake_model.base_url, rating_every=1)
    await send_turn(comm)
    frames = await frames_until(comm, {"complete"})
    assert frames[-1]["rating_due"] == 1
    await settled()
    await send_turn(comm, "another")
    error = (await frames_until(comm, {"error"}))[-1]
    assert error["code"] == "rating_due"
    await comm.send_json_to({"type": "rating", "after_turn": 1, "score": 8})
    state = (await frames_until(comm, {"state"}))[-1]
    assert state["rating_due"] is None and state["status"] == "chatting"
    await comm.disconnect()


async def test_presence_signals_are_logged(fake_model):
    participant, comm = await open_chat(fake_model.base_url)
    await comm.send_json_to({"type": "presence", "signal": "hidden"})
    await comm.send_json_to({"type": "sync"})
    await frames_until(comm, {"state"})
    kinds = await sync_to_async(list)(
        Event.objects.filter(participant=participant).values_list("kind", flat=True)
    )
    assert "study.presence.hidden" in kinds and "study.chat.connected" in kinds
    await comm.disconnect()
    disconnected = await sync_to_async(
        Event.objects.filter(participant=participant, kind="study.chat.disconnected").exists
    )()
    assert disconnected


@pytest.mark.slow
async def test_a_turn_against_the_real_embedded_model(embedded_model):
    participant = await make_chatting(
        embedded_model.base_url, model=embedded_model.model, read_timeout=120
    )
    comm, _, _ = await connect(participant)
    await comm.receive_json_from()
    await send_turn(comm, "Give me one title for a blog post about reading.")
    frames = await frames_until(comm, {"complete", "failed"}, wait=120)
    assert frames[-1]["type"] == "complete", frames[-1]
    assert any(f["type"] == "delta" for f in frames)
    await settled()
    _, reply = await messages_of(participant)
    assert reply.status == "complete" and reply.content.strip()
    assert reply.completion_tokens and reply.completion_tokens > 0 and reply.prompt_tokens > 0
    assert reply.time_to_first_token <= reply.duration
    await comm.disconnect()


async def test_a_reply_waiting_for_its_first_token_keeps_showing_it_is_alive(fake_model, settings):
    settings.CHAT_CHECKPOINT_INTERVAL = 0.1
    participant = await make_chatting(fake_model.base_url, model="fake-slow")
    await sync_to_async(repin)(
        participant, generation_params={"max_tokens": 4, "fake_first_token_delay_ms": 1500}
    )
    comm, _, _ = await connect(participant)
    await comm.receive_json_from()
    await send_turn(comm)
    await frames_until(comm, {"started"})
    _, reply = await messages_of(participant)
    await asyncio.sleep(0.8)
    _, later = await messages_of(participant)
    assert later.status == "streaming" and later.content == ""
    assert later.updated_at > reply.updated_at
    await frames_until(comm, {"complete"})
    await settled()
    await comm.disconnect()
