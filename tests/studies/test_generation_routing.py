"""Routing, stream limits, retries and cancellation of replies, through the chat socket."""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from channels.db import database_sync_to_async as sync_to_async
from django.conf import settings
from prometheus_client import REGISTRY

from models_serving.limits import StreamSlots
from studies.models import Message, ModelEndpoint, Participant, Study
from studies.services import generation, versions
from tests.factories import ParticipantFactory, three_arm_study
from tests.fakes.openai_server import FakeOpenAIServer
from tests.ports import free_port, unanswered_port
from tests.studies.conftest import advance_to_chat
from tests.studies.test_consumer import connect, frames_until, messages_of, send_turn, settled

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

SLOW = {"max_tokens": 16, "fake_delay_ms": 150}


@pytest.fixture(autouse=True)
def _own_keys(monkeypatch) -> str:
    """Stream slots and cool-downs under a key prefix of this test's own."""
    prefix = f"test-gen-{uuid.uuid4().hex}"
    monkeypatch.setattr(generation, "KEY_PREFIX", prefix)
    return prefix


@pytest.fixture
async def second_model() -> AsyncIterator[FakeOpenAIServer]:
    """Another replica of the fake model."""
    server = FakeOpenAIServer(tokens=24, token_delay=0.01, first_token_delay=0.2)
    await server.start()
    yield server
    await server.stop()


@sync_to_async
def make_participants(
    urls: list[str], *, count: int = 1, model: str = "fake", limit: int = 64, params=None
) -> list[Participant]:
    """Participants at the chat of one study whose arms use one endpoint with these replicas."""
    endpoint = ModelEndpoint.objects.create(
        name=f"ep-{uuid.uuid4().hex[:6]}",
        base_url=urls[0],
        replica_urls=urls[1:],
        served_model=model,
        read_timeout=5.0,
        connect_timeout=2.0,
        max_concurrent_streams=limit,
    )
    study = three_arm_study(endpoint=endpoint)
    pids = [advance_to_chat(ParticipantFactory(study=study)).pk for _ in range(count)]
    if params is not None:
        study.conditions.update(generation_params=params)
        version = versions.version_publish(study)
        Participant.objects.filter(pk__in=pids).update(
            version=version, config_version=version.number
        )
    return list(Participant.objects.select_related("study", "condition").filter(pk__in=pids))


async def chat(participant):
    comm, connected, _ = await connect(participant)
    assert connected
    await comm.receive_json_from()
    return comm


async def slots_snapshot(endpoint_id: int):
    name = await sync_to_async(lambda: ModelEndpoint.objects.get(pk=endpoint_id).name)()
    slots = StreamSlots(settings.REDIS_URL, generation.KEY_PREFIX)
    try:
        return await slots.snapshot(name)
    finally:
        await slots.aclose()


async def test_concurrent_turns_spread_across_two_replicas(slow_fake_model, second_model):
    urls = [slow_fake_model.base_url, f"http://127.0.0.1:{second_model.port}/v1"]
    first, second = await make_participants(urls, count=2, params=SLOW)
    a, b = await chat(first), await chat(second)
    await send_turn(a)
    await frames_until(a, {"delta"})
    await send_turn(b)
    for comm in (a, b):
        assert (await frames_until(comm, {"complete", "failed"}))[-1]["type"] == "complete"
    await settled()
    assert (slow_fake_model.server.stats.chat_requests, second_model.stats.chat_requests) == (1, 1)
    replies = [(await messages_of(p))[-1] for p in (first, second)]
    assert [r.endpoint_url for r in replies] == urls
    for comm in (a, b):
        await comm.disconnect()


@contextlib.contextmanager
def _dead_replica(kind: str) -> Iterator[str]:
    """A replica URL that refuses connections, or accepts none in time (a connect timeout)."""
    if kind == "refuses":
        yield f"http://127.0.0.1:{free_port()}/v1"
        return
    with unanswered_port() as port:
        yield f"http://127.0.0.1:{port}/v1"


@pytest.mark.parametrize("kind", ["refuses", "accepts_no_connection_in_time"])
async def test_a_dead_replica_is_marked_down_and_skipped_before_the_first_token(fake_model, kind):
    with _dead_replica(kind) as dead:
        (participant,) = await make_participants([dead, fake_model.base_url])
        comm = await chat(participant)
        await send_turn(comm)
        assert (await frames_until(comm, {"complete", "failed"}))[-1]["type"] == "complete"
        await settled()
    _, reply = await messages_of(participant)
    assert reply.status == "complete" and reply.endpoint_url == fake_model.base_url
    assert (await slots_snapshot(participant.condition.endpoint_id)).down == {dead}
    await comm.disconnect()


async def test_a_stream_that_breaks_after_text_is_not_retried(fake_model, second_model):
    urls = [fake_model.base_url, f"http://127.0.0.1:{second_model.port}/v1"]
    (participant,) = await make_participants(urls, model="fake-drop")
    comm = await chat(participant)
    await send_turn(comm)
    failed = (await frames_until(comm, {"complete", "failed"}))[-1]
    assert failed["type"] == "failed" and failed["error"] == "malformed_stream" and failed["text"]
    await settled()
    assert fake_model.server.stats.chat_requests + second_model.stats.chat_requests == 1
    _, reply = await messages_of(participant)
    assert reply.status == "failed" and reply.content == failed["text"]
    await comm.disconnect()


async def test_with_one_slot_the_second_participant_sees_busy_then_gets_the_reply(
    slow_fake_model,
):
    first, second = await make_participants(
        [slow_fake_model.base_url], count=2, limit=1, params=SLOW
    )
    a, b = await chat(first), await chat(second)
    await send_turn(a)
    await frames_until(a, {"delta"})
    await send_turn(b)
    frames = await frames_until(b, {"complete", "failed"})
    kinds = [f["type"] for f in frames]
    assert "busy" in kinds and kinds[-1] == "complete"
    assert kinds.index("busy") < kinds.index("delta")
    busy = frames[kinds.index("busy")]
    assert busy["id"] == frames[-1]["message"]["id"] and busy["retry_in"] > 0
    assert (await frames_until(a, {"complete", "failed"}))[-1]["type"] == "complete"
    await settled()
    assert (await slots_snapshot(first.condition.endpoint_id)).outstanding == {}
    for comm in (a, b):
        await comm.disconnect()


async def test_a_reply_that_never_gets_a_slot_fails_as_busy(fake_model, monkeypatch):
    monkeypatch.setattr(generation, "BUSY_DEADLINE", 0.8)
    (participant,) = await make_participants([fake_model.base_url], limit=1)
    name = await sync_to_async(lambda: participant.condition.endpoint.name)()
    slots = StreamSlots(settings.REDIS_URL, generation.KEY_PREFIX)
    held = await slots.acquire(name, fake_model.base_url, 1, 60)
    assert held is not None
    comm = await chat(participant)
    await send_turn(comm)
    frames = await frames_until(comm, {"complete", "failed"})
    assert "busy" in [f["type"] for f in frames]
    assert frames[-1]["type"] == "failed" and frames[-1]["error"] == "busy"
    await settled()
    assert fake_model.server.stats.chat_requests == 0
    _, reply = await messages_of(participant)
    assert reply.status == "failed" and reply.error_kind == "busy"
    await slots.release(held)
    await slots.aclose()
    await comm.disconnect()


@pytest.mark.parametrize("leave", ["study_closed", "participant_abandoned"])
async def test_a_reply_is_cancelled_upstream_when_the_participant_is_gone_for_good(
    slow_fake_model, settings, leave
):
    settings.CHAT_CHECKPOINT_INTERVAL = 0.1
    (participant,) = await make_participants([slow_fake_model.base_url], params=SLOW)
    comm = await chat(participant)
    await send_turn(comm)
    await frames_until(comm, {"delta"})
    if leave == "study_closed":
        await sync_to_async(Study.objects.filter(pk=participant.study_id).update)(
            status=Study.Status.CLOSED
        )
    else:
        await sync_to_async(Participant.objects.filter(pk=participant.pk).update)(
            status=Participant.Status.ABANDONED
        )
    failed = (await frames_until(comm, {"complete", "failed"}))[-1]
    assert failed["type"] == "failed" and failed["error"] == "interrupted"
    await settled()
    _, reply = await messages_of(participant)
    assert reply.status == Message.Status.INTERRUPTED and reply.error_kind == "abandoned"
    for _ in range(100):
        if slow_fake_model.server.stats.disconnects:
            break
        await asyncio.sleep(0.05)
    assert slow_fake_model.server.stats.disconnects == 1
    assert slow_fake_model.server.stats.streams_completed == 0
    await comm.disconnect()


async def test_the_reply_stores_its_inter_token_latency_and_replica(fake_model):
    (participant,) = await make_participants([fake_model.base_url])
    comm = await chat(participant)
    await send_turn(comm)
    assert (await frames_until(comm, {"complete", "failed"}))[-1]["type"] == "complete"
    await settled()
    _, reply = await messages_of(participant)
    assert reply.inter_token_latency is not None
    assert 0 < reply.inter_token_latency < reply.duration
    assert reply.endpoint_url == fake_model.base_url
    await comm.disconnect()


async def test_a_finished_reply_is_counted_in_the_metrics(fake_model):
    (participant,) = await make_participants([fake_model.base_url])
    endpoint = await sync_to_async(lambda: participant.condition.endpoint.name)()
    labels = {"endpoint": endpoint, "outcome": "completed"}
    before = REGISTRY.get_sample_value("collabllm_model_requests_total", labels) or 0
    comm = await chat(participant)
    await send_turn(comm)
    assert (await frames_until(comm, {"complete", "failed"}))[-1]["type"] == "complete"
    await settled()
    assert REGISTRY.get_sample_value("collabllm_model_requests_total", labels) == before + 1
    ttft = REGISTRY.get_sample_value("collabllm_model_ttft_seconds_count", {"endpoint": endpoint})
    assert ttft and ttft >= 1
    await comm.disconnect()
