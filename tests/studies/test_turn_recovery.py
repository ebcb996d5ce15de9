"""The reaper tells live replies from dead ones; a wrongly reaped or held reply is still stored."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from studies.models import Event, Message, Participant
from studies.services import inflight, turns
from tests.ports import free_port
from tests.studies.conftest import complete_reply, new_key

pytestmark = pytest.mark.django_db
M = Message.Status


@pytest.fixture(autouse=True)
def _own_keys(monkeypatch) -> None:
    monkeypatch.setattr(inflight, "KEY_PREFIX", f"test-replies-{uuid.uuid4().hex}")


def start_reply(participant, *, silent_seconds: float = 0) -> Message:
    reply = turns.turn_start(participant_id=participant.pk, text="hi", key=new_key())
    message = reply.assistant_message
    Message.objects.filter(pk=message.pk).update(
        content="checkpointed", updated_at=timezone.now() - timedelta(seconds=silent_seconds)
    )
    return message


def reap(participant) -> list[int]:
    return turns.turn_reap_stale(participant_id=participant.pk, running=set())


def held_record(reply: Message, text: str) -> dict:
    return dict(
        message_id=reply.pk, participant_id=reply.participant_id, text=text, model="m",
        finish_reason="stop", prompt_tokens=5, completion_tokens=4, time_to_first_token=0.1,
        duration=0.4, usage_source="stream", inter_token_latency=0.1, endpoint_url="",
    )  # fmt: skip


def test_a_silent_reply_whose_process_renews_its_liveness_key_is_not_reaped(chatting):
    reply = start_reply(chatting, silent_seconds=600)
    inflight.alive_mark(reply.pk)
    assert reap(chatting) == []
    inflight.alive_clear(reply.pk)
    assert reap(chatting) == [reply.pk]
    reply.refresh_from_db()
    assert reply.status == M.INTERRUPTED and reply.content == "checkpointed"


@pytest.mark.parametrize("reaper", ["participant", "sweep"])
def test_a_reply_held_just_before_its_process_drops_the_liveness_key_is_never_reaped(
    chatting, monkeypatch, reaper
):
    # Its process finished it, found the database away and is shutting down: it holds the
    # reply in Redis, then drops its liveness key. Should that happen between the reaper's two
    # Redis reads, the reaper must still see one or the other.
    reply = start_reply(chatting, silent_seconds=600)
    inflight.alive_mark(reply.pk)
    read_alive = inflight.alive_among

    def process_holds_then_stops(message_ids: list[int]) -> set[int]:
        if inflight.held_get(reply.pk) is None:
            inflight.held_put(reply.pk, held_record(reply, "The whole reply."))
            inflight.alive_clear(reply.pk)
        return read_alive(message_ids)

    monkeypatch.setattr(inflight, "alive_among", process_holds_then_stops)
    participant_id = chatting.pk if reaper == "participant" else None
    assert turns.turn_reap_stale(participant_id=participant_id, running=set()) == []
    reply.refresh_from_db()
    assert reply.status == M.STREAMING  # the next reap stores the held copy
    assert not Event.objects.filter(kind="study.turn.interrupted").exists()
    turns.turn_reap_stale(participant_id=participant_id, running=set())
    reply.refresh_from_db()
    assert (reply.status, reply.content) == (M.COMPLETE, "The whole reply.")


def test_without_redis_only_replies_silent_past_the_longer_bound_are_reaped(
    chatting, settings, study
):
    settings.CHAT_REAP_WITHOUT_REDIS_SECONDS = 300
    recent = start_reply(chatting, silent_seconds=60)
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    assert reap(chatting) == []
    Message.objects.filter(pk=recent.pk).update(updated_at=timezone.now() - timedelta(minutes=6))
    assert reap(chatting) == [recent.pk]


def test_a_reply_reaped_while_its_process_lived_is_stored_complete_when_it_finishes(chatting):
    reply = start_reply(chatting, silent_seconds=600)
    assert reap(chatting) == [reply.pk]
    assert turns.turn_checkpoint(message_id=reply.pk, text="checkpointed and more")
    outcome = complete_reply(reply, text="The whole reply.")
    reply.refresh_from_db()
    assert outcome.message.pk == reply.pk and not outcome.superseded
    assert (reply.status, reply.content, reply.error_kind) == (M.COMPLETE, "The whole reply.", "")
    assert outcome.completed_turns == 1
    kinds = list(Event.objects.filter(participant=chatting).values_list("kind", flat=True))
    assert kinds[-2:] == ["study.turn.interrupted", "study.turn.completed"]


def test_a_reaped_reply_replaced_by_a_retry_keeps_its_late_text_and_stays_interrupted(chatting):
    reply = start_reply(chatting, silent_seconds=600)
    reap(chatting)
    retry = turns.turn_retry(participant_id=chatting.pk, message_id=reply.pk)
    assert not turns.turn_checkpoint(message_id=reply.pk, text="late partial")
    outcome = complete_reply(reply, text="The late reply.")
    reply.refresh_from_db()
    retry.refresh_from_db()
    assert outcome.superseded and reply.status == M.INTERRUPTED
    assert reply.content == "The late reply." and retry.status == M.STREAMING


def test_a_reply_failed_by_the_model_is_not_completed_later(chatting):
    reply = start_reply(chatting)
    turns.turn_fail(message_id=reply.pk, text="part", kind="timeout", detail="read timeout")
    with pytest.raises(turns.StudyActionError) as err:
        complete_reply(reply, text="late")
    assert err.value.code == "not_streaming"


def test_a_held_reply_drained_twice_is_stored_once(chatting):
    reply = start_reply(chatting)
    inflight.held_put(reply.pk, held_record(reply, "Held text."))
    assert turns.turn_store_held(participant_id=chatting.pk) == [reply.pk]
    inflight.held_put(reply.pk, held_record(reply, "Held text, again."))  # a second holder
    assert turns.turn_store_held(participant_id=chatting.pk) == []
    assert turns.turn_store_held() == []
    reply.refresh_from_db()
    assert reply.status == M.COMPLETE and reply.content == "Held text."
    completed = Event.objects.filter(kind="study.turn.completed", payload__reply=reply.pk)
    assert completed.count() == 1
    assert inflight.held_get(reply.pk) is None


def test_the_drain_for_one_participant_leaves_other_participants_holds(chatting, study):
    from tests.factories import ParticipantFactory
    from tests.studies.conftest import advance_to_chat

    other = advance_to_chat(ParticipantFactory(study=study))
    mine, theirs = start_reply(chatting), start_reply(other)
    inflight.held_put(mine.pk, held_record(mine, "Mine."))
    inflight.held_put(theirs.pk, held_record(theirs, "Theirs."))
    assert turns.turn_store_held(participant_id=chatting.pk) == [mine.pk]
    assert inflight.held_get(theirs.pk) is not None
    assert turns.turn_reap_stale(participant_id=None, running=set()) == []
    theirs.refresh_from_db()
    assert theirs.status == M.COMPLETE and theirs.content == "Theirs."


@pytest.mark.parametrize("moved_on", ["final", "timed_out", "excluded"])
def test_a_reaped_reply_finishing_after_the_chat_ended_is_kept_but_not_counted(chatting, moved_on):
    reply = start_reply(chatting, silent_seconds=600)
    assert reap(chatting) == [reply.pk]
    Participant.objects.filter(pk=chatting.pk).update(
        status=moved_on, chat_finished_at=timezone.now()
    )
    outcome = complete_reply(reply, text="The late reply.")
    reply.refresh_from_db()
    chatting.refresh_from_db()
    assert outcome.superseded and outcome.rating_due_after is None
    assert outcome.completed_turns == 0 and chatting.status == moved_on
    assert (reply.status, reply.content) == (M.INTERRUPTED, "The late reply.")
    kept = Event.objects.filter(kind="study.turn.late_reply_kept", payload__reply=reply.pk)
    assert kept.count() == 1
    assert not Event.objects.filter(kind="study.turn.completed", payload__reply=reply.pk).exists()


def test_a_streaming_reply_finishing_after_the_participant_left_is_kept_and_ended(chatting):
    reply = start_reply(chatting)
    Participant.objects.filter(pk=chatting.pk).update(status="abandoned")
    outcome = complete_reply(reply, text="Nobody is reading this.")
    reply.refresh_from_db()
    assert outcome.superseded and outcome.completed_turns == 0
    assert (reply.status, reply.error_kind) == (M.INTERRUPTED, turns.LATE)
    assert reply.content == "Nobody is reading this."


class NoRedis:
    """Stands in for the Redis client: any call fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"Redis was asked ({name}) though nothing could be held")


def test_a_connect_without_a_reply_in_flight_does_not_ask_redis(chatting, monkeypatch):
    reply = start_reply(chatting)
    complete_reply(reply, text="Done.")
    monkeypatch.setattr(inflight, "_redis", NoRedis)
    assert reap(chatting) == []


def test_the_drain_for_one_participant_reads_only_that_participants_holds(
    chatting, study, monkeypatch
):
    from tests.factories import ParticipantFactory
    from tests.studies.conftest import advance_to_chat

    others = [advance_to_chat(ParticipantFactory(study=study)) for _ in range(2)]
    theirs = [start_reply(other) for other in others]
    for reply in theirs:
        inflight.held_put(reply.pk, held_record(reply, "Theirs."))
    mine = start_reply(chatting)
    inflight.held_put(mine.pk, held_record(mine, "Mine."))
    read: list[int] = []
    real_get = inflight.held_get
    monkeypatch.setattr(inflight, "held_get", lambda pk: read.append(pk) or real_get(pk))
    assert reap(chatting) == []
    assert read == [mine.pk]
    mine.refresh_from_db()
    assert mine.status == M.COMPLETE and mine.content == "Mine."
    assert sorted(inflight.held_ids()) == sorted(r.pk for r in theirs)
    assert inflight.held_ids(chatting.pk) == []


def test_the_services_share_one_redis_client_per_url_and_timeout(settings):
    from studies.services import reentry
    from studies.services.redis import redis_client

    assert inflight._redis() is redis_client(inflight.REDIS_TIMEOUT)
    assert redis_client(reentry.REDIS_TIMEOUT) is redis_client(reentry.REDIS_TIMEOUT)
    assert redis_client(0.5) is not redis_client(2.0)
    before = redis_client(0.5)
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    assert redis_client(0.5) is not before
    assert redis_client(0.5).connection_pool.connection_kwargs["socket_timeout"] == 0.5
