from datetime import timedelta

import pytest
from django.utils import timezone

from studies.models import Event, Message, Participant, TurnRating
from studies.services import turns
from studies.services.errors import StudyActionError
from tests.factories import ParticipantFactory
from tests.studies.conftest import advance_to_chat, complete_reply, new_key

pytestmark = pytest.mark.django_db


def snapshot(participant):
    """Everything a refused action must leave untouched."""
    participant.refresh_from_db()
    return (
        participant.status,
        list(
            Message.objects.filter(participant=participant).values_list("id", "status", "content")
        ),
        TurnRating.objects.filter(participant=participant).count(),
        Event.objects.filter(participant=participant).count(),
    )


def complete(reply, text="Sure."):
    return complete_reply(reply, text=text)


def test_a_turn_stores_the_user_message_and_a_pinned_streaming_reply(chatting):
    started = turns.turn_start(participant_id=chatting.pk, text=" Hello ", key=new_key())
    assert started.user_message.content == "Hello"
    reply = started.assistant_message
    condition = chatting.condition
    assert reply.status == Message.Status.STREAMING and reply.turn_index == 1
    assert reply.model == condition.endpoint.served_model
    assert reply.generation_params == condition.generation_params
    assert reply.prompt_ref.startswith(condition.system_prompt)


def test_a_replayed_key_returns_the_same_message_and_writes_nothing(chatting):
    key = new_key()
    first = turns.turn_start(participant_id=chatting.pk, text="Hello", key=key)
    before = snapshot(chatting)
    again = turns.turn_start(participant_id=chatting.pk, text="Hello", key=key)
    assert again.replayed and again.user_message.pk == first.user_message.pk
    assert again.assistant_message is None
    assert snapshot(chatting) == before


@pytest.mark.parametrize("text,code", [("", "empty"), ("   ", "empty"), ("x" * 4001, "too_long")])
def test_bad_messages_are_refused_and_change_nothing(chatting, text, code):
    before = snapshot(chatting)
    with pytest.raises(StudyActionError) as err:
        turns.turn_start(participant_id=chatting.pk, text=text, key=new_key())
    assert err.value.code == code
    assert snapshot(chatting) == before


def test_a_second_message_while_a_reply_streams_is_refused(chatting):
    turns.turn_start(participant_id=chatting.pk, text="one", key=new_key())
    before = snapshot(chatting)
    with pytest.raises(StudyActionError) as err:
        turns.turn_start(participant_id=chatting.pk, text="two", key=new_key())
    assert err.value.code == "busy"
    assert snapshot(chatting) == before


def test_the_rating_checkpoint_blocks_the_next_turn_until_recorded(chatting):
    every = chatting.study.rating_every
    for i in range(every):
        reply = turns.turn_start(
            participant_id=chatting.pk, text=f"m{i}", key=new_key()
        ).assistant_message
        outcome = complete(reply)
    assert outcome.rating_due_after == every
    chatting.refresh_from_db()
    assert chatting.status == Participant.Status.RATING_DUE
    before = snapshot(chatting)
    with pytest.raises(StudyActionError) as err:
        turns.turn_start(participant_id=chatting.pk, text="more", key=new_key())
    assert err.value.code == "rating_due"
    assert snapshot(chatting) == before
    with pytest.raises(StudyActionError) as err:
        turns.rating_record(participant_id=chatting.pk, after_turn=every + 1, score=5)
    assert err.value.code == "wrong_checkpoint"
    turns.rating_record(participant_id=chatting.pk, after_turn=every, score=7)
    chatting.refresh_from_db()
    assert chatting.status == Participant.Status.CHATTING
    assert turns.turn_start(
        participant_id=chatting.pk, text="more", key=new_key()
    ).assistant_message


@pytest.mark.parametrize("score", [0, 11, "7", True, 7.5])
def test_ratings_outside_one_to_ten_are_refused(chatting, score):
    with pytest.raises(StudyActionError) as err:
        turns.rating_record(participant_id=chatting.pk, after_turn=0, score=score)
    assert err.value.code == "bad_score"


def test_a_rating_when_none_is_due_is_refused(chatting):
    before = snapshot(chatting)
    with pytest.raises(StudyActionError) as err:
        turns.rating_record(participant_id=chatting.pk, after_turn=0, score=5)
    assert err.value.code == "no_rating_due"
    assert snapshot(chatting) == before


def test_sending_too_fast_is_rate_limited(study, settings):
    settings.CHAT_TURNS_PER_MINUTE = 2
    study.rating_every = 0
    study.save()
    chatting = advance_to_chat(ParticipantFactory(study=study))
    for i in range(2):
        complete(
            turns.turn_start(
                participant_id=chatting.pk, text=f"m{i}", key=new_key()
            ).assistant_message
        )
    with pytest.raises(StudyActionError) as err:
        turns.turn_start(participant_id=chatting.pk, text="m3", key=new_key())
    assert err.value.code == "rate_limited"


def test_a_failed_reply_must_be_retried_before_a_new_turn_and_only_it_can_be(chatting):
    reply = turns.turn_start(participant_id=chatting.pk, text="hi", key=new_key()).assistant_message
    turns.turn_fail(message_id=reply.pk, text="partial", kind="timeout", detail="read timeout")
    reply.refresh_from_db()
    assert reply.status == Message.Status.FAILED and reply.content == "partial"
    with pytest.raises(StudyActionError) as err:
        turns.turn_start(participant_id=chatting.pk, text="next", key=new_key())
    assert err.value.code == "retry_needed"
    with pytest.raises(StudyActionError):
        turns.turn_retry(participant_id=chatting.pk, message_id=reply.pk + 1000)
    retry = turns.turn_retry(participant_id=chatting.pk, message_id=reply.pk)
    assert (retry.turn_index, retry.attempt, retry.status) == (1, 2, Message.Status.STREAMING)
    assert Message.objects.filter(participant=chatting, role="user").count() == 1


def test_a_stale_stream_is_marked_interrupted_but_a_running_one_is_not(chatting):
    reply = turns.turn_start(participant_id=chatting.pk, text="hi", key=new_key()).assistant_message
    Message.objects.filter(pk=reply.pk).update(
        content="checkpointed", updated_at=timezone.now() - timedelta(minutes=5)
    )
    assert turns.turn_reap_stale(participant_id=chatting.pk, running={reply.pk}) == []
    assert turns.turn_reap_stale(participant_id=chatting.pk, running=set()) == [reply.pk]
    reply.refresh_from_db()
    assert reply.status == Message.Status.INTERRUPTED and reply.content == "checkpointed"


def test_completing_a_reply_twice_is_refused(chatting):
    reply = turns.turn_start(participant_id=chatting.pk, text="hi", key=new_key()).assistant_message
    complete(reply, text="first")
    with pytest.raises(StudyActionError):
        complete(reply, text="second")
    reply.refresh_from_db()
    assert reply.content == "first"


def test_checkpoints_do_not_touch_a_finished_reply(chatting):
    reply = turns.turn_start(participant_id=chatting.pk, text="hi", key=new_key()).assistant_message
    turns.turn_checkpoint(message_id=reply.pk, text="par")
    reply.refresh_from_db()
    assert reply.content == "par"
    complete(reply, text="final")
    turns.turn_checkpoint(message_id=reply.pk, text="late")
    reply.refresh_from_db()
    assert reply.content == "final"


def test_the_periodic_sweep_interrupts_stale_replies_of_every_participant(chatting):
    from studies.tasks import reap_stale_replies

    reply = turns.turn_start(participant_id=chatting.pk, text="hi", key=new_key()).assistant_message
    assert reap_stale_replies() == 0
    Message.objects.filter(pk=reply.pk).update(updated_at=timezone.now() - timedelta(minutes=5))
    assert reap_stale_replies.apply().get() == 1
    reply.refresh_from_db()
    assert reply.status == Message.Status.INTERRUPTED
