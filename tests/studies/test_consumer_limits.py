"""Every chat socket frame is bounded: token buckets per frame type, and cheap repeated syncs."""

import json
import uuid

import pytest
from channels.db import database_sync_to_async as sync_to_async

from studies import ratelimit, selectors
from studies.consumers import ChatConsumer
from studies.models import Event, Participant
from studies.services import rendering, turns
from studies.services.participants import completed_turns
from tests.studies.conftest import complete_reply
from tests.studies.test_consumer import frames_until, make_chatting, open_chat

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

SENTINEL_SYNC = {"type": "sync"}
SENTINEL_RETRY = {"type": "retry", "message_id": "not an id"}  # answered "malformed", no DB


@pytest.fixture
def stopped_clock(monkeypatch):
    """Buckets do not refill during the test: what they let through is exactly their burst."""
    monkeypatch.setattr(ratelimit, "now", lambda: 1000.0)


@pytest.fixture
def consumers(monkeypatch):
    """The ChatConsumer instances connected during the test."""
    seen: list[ChatConsumer] = []
    original = ChatConsumer.connect

    async def recording(self):
        seen.append(self)
        await original(self)

    monkeypatch.setattr(ChatConsumer, "connect", recording)
    return seen


def _footprint(consumer: ChatConsumer) -> dict[str, int]:
    """The length of every container the consumer holds, its limiter's buckets included."""
    state = {**vars(consumer), **{f"limiter.{k}": getattr(consumer.limiter, k) for k in
             consumer.limiter.__slots__}}  # fmt: skip
    return {k: len(v) for k, v in state.items() if isinstance(v, list | dict | set | tuple)}


async def _presence_events(participant) -> int:
    return await sync_to_async(
        Event.objects.filter(participant=participant, kind__startswith="study.presence").count
    )()


async def test_a_presence_flood_writes_a_bounded_number_of_events_and_closes_the_socket(
    fake_model, stopped_clock, consumers
):
    participant, comm = await open_chat(fake_model.base_url)
    [consumer] = consumers
    before = _footprint(consumer)
    for _ in range(10_000):
        await comm.send_json_to({"type": "presence", "signal": "active"})
    closed = await frames_until_close(comm)
    await comm.disconnect(timeout=60)  # queued after the flood: every frame has been handled
    burst = ratelimit.FRAME_RATES["presence"].burst
    assert await _presence_events(participant) == burst
    assert closed["code"] == ratelimit.CLOSE_CODE
    # The per-socket state does not grow with the flood (a list of timestamps would).
    after = _footprint(consumer)
    assert {k: n for k, n in after.items() if k != "limiter._told"} == {
        k: n for k, n in before.items() if k != "limiter._told"
    }
    assert after["limiter._told"] <= len(ratelimit.FRAME_RATES)


async def frames_until_close(comm) -> dict:
    """Read output until the server closes the socket; text frames must be bounded on the way."""
    texts = 0
    while True:
        out = await comm.receive_output(timeout=30)
        if out["type"] == "websocket.close":
            return out
        texts += 1
        assert texts < 100, "the server answered a flood frame by frame"


async def test_a_malformed_flood_gets_a_bounded_answer_no_event_and_a_close(
    fake_model, stopped_clock
):
    participant, comm = await open_chat(fake_model.base_url)
    events = await sync_to_async(Event.objects.count)()
    for _ in range(10_000):
        await comm.send_to(text_data="not json")
    errors = []
    while True:
        out = await comm.receive_output(timeout=30)
        if out["type"] == "websocket.close":
            break
        errors.append(json.loads(out["text"])["code"])
    assert out["code"] == ratelimit.CLOSE_CODE
    burst = ratelimit.FRAME_RATES["invalid"].burst
    assert errors == ["malformed"] * burst + ["rate_limited"]
    await comm.disconnect(timeout=60)
    assert await sync_to_async(Event.objects.count)() == events + 1  # the disconnect only
    assert participant.pk


@pytest.mark.parametrize(
    ("frame", "answer", "sentinel"),
    [
        ({"type": "sync"}, "state", SENTINEL_RETRY),
        ({"type": "retry", "message_id": 1}, "not_retryable", SENTINEL_SYNC),
        ({"type": "rating", "after_turn": 0, "score": 5}, "no_rating_due", SENTINEL_SYNC),
        ({"type": "send", "text": "hi"}, "malformed", SENTINEL_SYNC),
        ({"type": "paste", "chars": "many"}, "malformed", SENTINEL_SYNC),
        ({"type": "presence", "signal": "dancing"}, "malformed", SENTINEL_SYNC),
    ],
)
async def test_a_flood_of_one_frame_type_is_answered_up_to_its_burst_then_told_once(
    fake_model, stopped_clock, frame, answer, sentinel
):
    _, comm = await open_chat(fake_model.base_url)
    burst = ratelimit.FRAME_RATES[frame["type"]].burst
    for _ in range(burst + 30):
        await comm.send_json_to(frame)
    await comm.send_json_to(sentinel)  # another type's bucket: still answered, after the flood
    frames = await frames_until(comm, {"state"} if sentinel is SENTINEL_SYNC else {"error"})
    if sentinel is SENTINEL_RETRY:
        while frames[-1].get("code") != "malformed":
            frames += await frames_until(comm, {"error"})
    answers = [f["type"] if f["type"] == "state" else f["code"] for f in frames[:-1]]
    assert answers == [answer] * burst + ["rate_limited"]
    await comm.disconnect()


async def test_a_refused_send_keeps_its_key_so_the_page_keeps_the_draft(fake_model, stopped_clock):
    _, comm = await open_chat(fake_model.base_url)
    burst = ratelimit.FRAME_RATES["send"].burst
    for _ in range(burst):
        await comm.send_json_to({"type": "send", "text": "hi"})
    key = str(uuid.uuid4())
    await comm.send_json_to({"type": "send", "text": "hello", "key": key})
    frames = await frames_until(comm, {"error"})
    while frames[-1]["code"] != "rate_limited":
        frames += await frames_until(comm, {"error"})
    assert frames[-1]["key"] == key and frames[-1]["message"]
    await comm.disconnect()


def test_a_bucket_refills_at_its_rate_up_to_its_burst():
    clock = [0.0]
    limiter = ratelimit.FrameLimiter(
        {"sync": ratelimit.Rate(2.0, 3)}, ratelimit.Rate(0.0, 1000), clock=lambda: clock[0]
    )
    assert [limiter.check("sync") for _ in range(4)] == [ratelimit.Verdict.ALLOW] * 3 + [
        ratelimit.Verdict.REFUSE
    ]
    assert limiter.check("sync") is ratelimit.Verdict.DROP  # told once per run of refusals
    clock[0] = 0.5  # one token back at 2 a second
    assert limiter.check("sync") is ratelimit.Verdict.ALLOW
    assert limiter.check("sync") is ratelimit.Verdict.REFUSE  # a new run is told again
    clock[0] = 100.0  # never more than the burst
    verdicts = [limiter.check("sync") for _ in range(5)]
    assert verdicts.count(ratelimit.Verdict.ALLOW) == 3


def test_unknown_frame_types_share_the_invalid_bucket_and_abuse_closes():
    limiter = ratelimit.FrameLimiter(
        {"invalid": ratelimit.Rate(0.0, 2)}, ratelimit.Rate(0.0, 3), clock=lambda: 0.0
    )
    verdicts = [limiter.check(kind) for kind in ("dance", "jump", "dance", "x", "y", "z")]
    V = ratelimit.Verdict
    assert verdicts == [V.ALLOW, V.ALLOW, V.REFUSE, V.DROP, V.DROP, V.CLOSE]


async def test_repeated_syncs_render_no_markdown_for_unchanged_finished_replies(
    fake_model, monkeypatch
):
    participant = await make_chatting(fake_model.base_url)
    await sync_to_async(_finish_turns)(participant.pk, 3)
    calls = []
    original = rendering._md.render
    monkeypatch.setattr(rendering._md, "render", lambda text: calls.append(text) or original(text))
    _, comm = await open_chat_for(participant)
    first = len(calls)
    for _ in range(5):
        await comm.send_json_to({"type": "sync"})
        state = (await frames_until(comm, {"state"}))[-1]
        assert [m["html"] for m in state["messages"] if m["role"] == "assistant"]
    assert len(calls) == first
    await comm.disconnect()


def _finish_turns(participant_id: int, count: int) -> None:
    for index in range(count):
        started = turns.turn_start(
            participant_id=participant_id, text=f"question {index}", key=uuid.uuid4()
        )
        complete_reply(started.assistant_message, text=f"**Answer** number {index} {uuid.uuid4()}")
        done = completed_turns(participant_id)
        if Participant.objects.get(pk=participant_id).status == Participant.Status.RATING_DUE:
            turns.rating_record(participant_id=participant_id, after_turn=done, score=5)


async def open_chat_for(participant):
    from tests.studies.test_consumer import connect

    comm, connected, _ = await connect(participant)
    assert connected
    await comm.receive_json_from()
    return None, comm


@pytest.mark.django_db
def test_a_sync_reads_a_fixed_number_of_queries_whatever_the_transcript_length(
    chatting, django_assert_num_queries
):
    _finish_turns(chatting.pk, 1)
    with django_assert_num_queries(SYNC_QUERIES):
        short = selectors.chat_state(participant_id=chatting.pk)
    _finish_turns(chatting.pk, 4)
    with django_assert_num_queries(SYNC_QUERIES):
        long = selectors.chat_state(participant_id=chatting.pk)
    assert len(long["messages"]) == len(short["messages"]) + 8


SYNC_QUERIES = 3  # the participant with its study and version, the messages, the turn count
