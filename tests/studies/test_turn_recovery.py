"""The reaper tells live replies from dead ones; a wrongly reaped or held reply is still stored."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from studies.models import Event, Message
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
