"""Continuing a reply that stopped at the token limit: same turn, never a turn of its own."""

import pyarrow.parquet as pq
import pytest

from studies.models import Event, Message, Participant, TurnRating
from studies.selectors import chat_state, generation_plan, message_frame
from studies.services import exports, turns, versions
from studies.services.errors import StudyActionError
from studies.services.participants import completed_turns
from tests.factories import ParticipantFactory, three_arm_study
from tests.studies.conftest import advance_to_chat, new_key

pytestmark = pytest.mark.django_db


def snapshot(participant):
    """Everything a refused continuation must leave untouched."""
    participant.refresh_from_db()
    return (
        participant.status,
        list(
            Message.objects.filter(participant=participant).values_list(
                "id", "status", "content", "continuation_of"
            )
        ),
        TurnRating.objects.filter(participant=participant).count(),
        Event.objects.filter(participant=participant).count(),
    )


def finish(reply, text="A long answer that", reason="length"):
    return turns.turn_complete(
        message_id=reply.pk, text=text, model="m", finish_reason=reason, prompt_tokens=5,
        completion_tokens=2, time_to_first_token=0.1, duration=0.3,
    )  # fmt: skip


def turn(participant, text="Write me a paragraph.", reason="length", reply="A long answer that"):
    started = turns.turn_start(participant_id=participant.pk, text=text, key=new_key())
    return finish(started.assistant_message, reply, reason)


def continue_(participant, message):
    return turns.turn_continue(participant_id=participant.pk, message_id=message.pk)


def repin(participant, **arm_changes):
    participant.study.conditions.update(**arm_changes)
    version = versions.version_publish(participant.study)
    Participant.objects.filter(pk=participant.pk).update(
        version=version, config_version=version.number
    )


@pytest.fixture
def chatting(db):
    study = three_arm_study(rating_every=3, min_turns=2)
    return advance_to_chat(ParticipantFactory(study=study))


def test_a_cut_reply_is_stored_with_its_finish_reason_and_its_frame_says_so(chatting):
    outcome = turn(chatting)
    assert outcome.message.finish_reason == "length"
    assert message_frame(outcome.message)["finish_reason"] == "length"
    assert outcome.continuable


def test_a_continuation_is_a_pinned_reply_on_the_same_turn(chatting):
    cut = turn(chatting).message
    reply = continue_(chatting, cut)
    assert reply.continuation_of_id == cut.pk and reply.turn_index == cut.turn_index
    assert reply.role == "assistant" and reply.status == Message.Status.STREAMING
    assert reply.attempt == cut.attempt + 1
    assert reply.model == chatting.condition.endpoint.served_model
    assert reply.prompt_ref == cut.prompt_ref
    assert reply.generation_params["continuation"]["instruction"] == turns.CONTINUE_INSTRUCTION
    event = Event.objects.filter(participant=chatting).latest("id")
    assert event.kind == "study.turn.continued"
    assert event.payload == {"turn": 1, "continues": cut.pk, "reply": reply.pk}
    assert message_frame(reply)["continuation_of"] == cut.pk


def test_a_completed_continuation_sits_beside_the_reply_and_is_not_a_turn(chatting):
    cut = turn(chatting).message
    outcome = finish(continue_(chatting, cut), "goes on.", "stop")
    assert outcome.completed_turns == 1 and completed_turns(chatting.pk) == 1
    cut.refresh_from_db()
    assert cut.status == outcome.message.status == Message.Status.COMPLETE
    assert chat_state(participant_id=chatting.pk)["completed_turns"] == 1
    completed = Event.objects.filter(participant=chatting, kind="study.turn.completed")
    assert [e.payload.get("continues") for e in completed.order_by("id")] == [None, cut.pk]


def _refused(participant, message, code):
    before = snapshot(participant)
    with pytest.raises(StudyActionError) as err:
        continue_(participant, message)
    assert err.value.code == code
    assert snapshot(participant) == before


def test_a_reply_that_stopped_by_itself_is_not_continued(chatting):
    _refused(chatting, turn(chatting, reason="stop").message, "not_continuable")


def test_only_the_latest_reply_is_continued(chatting):
    cut = turn(chatting).message
    turn(chatting, text="And another thing?")
    _refused(chatting, cut, "not_continuable")


def test_no_continuation_while_a_reply_streams(chatting):
    cut = turn(chatting).message
    continue_(chatting, cut)
    _refused(chatting, cut, "busy")


def test_no_continuation_while_a_rating_is_due(chatting):
    turn(chatting, reason="stop")
    turn(chatting, reason="stop")
    cut = turn(chatting).message
    chatting.refresh_from_db()
    assert chatting.status == Participant.Status.RATING_DUE
    _refused(chatting, cut, "rating_due")


def test_no_continuation_when_the_arm_does_not_allow_it(chatting):
    repin(chatting, allow_continue=False)
    outcome = turn(chatting)
    assert not outcome.continuable
    assert chat_state(participant_id=chatting.pk)["continuable"] is None
    _refused(chatting, outcome.message, "continue_off")


def test_continuations_per_turn_are_bounded(chatting):
    part = turn(chatting).message
    for _ in range(turns.CONTINUATIONS_PER_TURN):
        part = finish(continue_(chatting, part)).message
    assert chat_state(participant_id=chatting.pk)["continuable"] is None
    _refused(chatting, part, "continue_limit")


def test_the_state_names_the_reply_that_can_be_continued(chatting):
    cut = turn(chatting).message
    assert chat_state(participant_id=chatting.pk)["continuable"] == cut.pk
    finish(continue_(chatting, cut), "goes on.", "stop")
    assert chat_state(participant_id=chatting.pk)["continuable"] is None


def test_a_continuation_opens_no_rating_after_the_checkpoint_was_rated(chatting):
    turn(chatting, reason="stop")
    turn(chatting, reason="stop")
    cut = turn(chatting).message
    turns.rating_record(participant_id=chatting.pk, after_turn=3, score=7)
    outcome = finish(continue_(chatting, cut), "goes on.", "stop")
    assert outcome.rating_due_after is None and outcome.completed_turns == 3
    chatting.refresh_from_db()
    assert chatting.status == Participant.Status.CHATTING
    next_turn = turns.turn_start(participant_id=chatting.pk, text="Next?", key=new_key())
    assert next_turn.assistant_message.turn_index == 4


def test_max_turns_do_not_count_continuations(chatting):
    chatting.study.max_turns = 2
    chatting.study.save()
    repin(chatting)
    cut = turn(chatting).message
    finish(continue_(chatting, cut), "goes on.", "stop")
    assert turns.turn_start(participant_id=chatting.pk, text="Two?", key=new_key())


def test_the_continuation_request_ends_with_the_cut_reply_and_the_instruction(chatting):
    cut = turn(chatting, text="Write me a paragraph.").message
    plan = generation_plan(message_id=continue_(chatting, cut).pk)
    assert [m["role"] for m in plan.messages][-3:] == ["user", "assistant", "user"]
    assert plan.messages[-2]["content"] == "A long answer that"
    assert plan.messages[-1]["content"] == turns.CONTINUE_INSTRUCTION
    assert "continuation" not in plan.params


def test_later_turns_see_the_reply_and_its_continuations_as_one_message(chatting):
    cut = turn(chatting, text="Write me a paragraph.").message
    part = finish(continue_(chatting, cut), "keeps going", "length").message
    finish(continue_(chatting, part), "and ends.", "stop")
    started = turns.turn_start(participant_id=chatting.pk, text="Thanks!", key=new_key())
    plan = generation_plan(message_id=started.assistant_message.pk)
    contents = [m["content"] for m in plan.messages if m["role"] != "system"]
    assert contents == [
        "Write me a paragraph.",
        "A long answer that keeps going and ends.",
        "Thanks!",
    ]


def test_a_failed_continuation_is_retried_as_a_continuation_and_the_reply_stays(chatting):
    cut = turn(chatting).message
    failed = continue_(chatting, cut)
    turns.turn_fail(message_id=failed.pk, text="", kind="server_error", detail="boom")
    retry = turns.turn_retry(participant_id=chatting.pk, message_id=failed.pk)
    assert retry.continuation_of_id == cut.pk and retry.attempt == failed.attempt + 1
    assert retry.generation_params == failed.generation_params
    cut.refresh_from_db()
    assert cut.status == Message.Status.COMPLETE
    assert completed_turns(chatting.pk) == 1


def test_a_new_turn_after_a_failed_continuation_keeps_the_cut_reply(chatting):
    cut = turn(chatting).message
    failed = continue_(chatting, cut)
    turns.turn_fail(message_id=failed.pk, text="", kind="server_error", detail="boom")
    started = turns.turn_start(participant_id=chatting.pk, text="Never mind.", key=new_key())
    assert started.assistant_message.turn_index == 2


def test_the_export_counts_turns_without_continuations_and_names_what_was_continued(
    chatting, tmp_path
):
    cut = turn(chatting).message
    part = finish(continue_(chatting, cut), "goes on.", "stop").message
    turn(chatting, text="Second question?", reason="stop")
    result = exports.export_study(chatting.study, tmp_path / "out")
    people = pq.read_table(result.path / "participants.parquet").to_pylist()
    assert [p["n_complete_turns"] for p in people] == [2]
    rows = {r["message_id"]: r for r in pq.read_table(result.path / "messages.parquet").to_pylist()}
    assert rows[part.pk]["continuation_of"] == cut.pk
    assert rows[cut.pk]["continuation_of"] is None
    assert rows[part.pk]["generation_params"].find("continuation") >= 0


def _complete(reply, *, prompt, completion, reason):
    return turns.turn_complete(
        message_id=reply.pk, text="words", model="m", finish_reason=reason, prompt_tokens=prompt,
        completion_tokens=completion, time_to_first_token=0.1, duration=0.3,
    ).message  # fmt: skip


def test_user_tokens_count_a_continued_reply_once_and_not_its_instruction(chatting, tmp_path):
    first = turns.turn_start(participant_id=chatting.pk, text="One?", key=new_key())
    cut = _complete(first.assistant_message, prompt=23, completion=10, reason="length")
    _complete(continue_(chatting, cut), prompt=45, completion=6, reason="stop")
    second = turns.turn_start(participant_id=chatting.pk, text="Two?", key=new_key())
    _complete(second.assistant_message, prompt=23 + 10 + 6 + 3, completion=10, reason="stop")
    result = exports.export_study(chatting.study, tmp_path / "out")
    people = pq.read_table(result.path / "participants.parquet").to_pylist()
    assert [p["user_tokens"] for p in people] == [3]


def test_another_participants_reply_is_not_continued(chatting):
    stranger = advance_to_chat(ParticipantFactory(study=chatting.study))
    theirs = turn(stranger).message
    turn(chatting)
    before = snapshot(stranger)
    _refused(chatting, theirs, "not_continuable")
    assert snapshot(stranger) == before


def test_a_reaped_continuation_that_finishes_after_a_new_turn_is_kept_not_completed(chatting):
    cut = turn(chatting).message
    part = continue_(chatting, cut)
    turns.turn_fail(
        message_id=part.pk, text="goes", kind=turns.REAPED, detail="gone", interrupted=True
    )
    nxt = turns.turn_start(participant_id=chatting.pk, text="Never mind.", key=new_key())
    assert not turns.turn_checkpoint(message_id=part.pk, text="goes on")
    outcome = finish(part, "goes on.", "stop")
    assert outcome.superseded
    part.refresh_from_db()
    assert part.status == Message.Status.INTERRUPTED and part.content == "goes on."
    # The new turn's reply was asked without that text; later turns must not see it either.
    finish(nxt.assistant_message, "Fine.", "stop")
    third = turns.turn_start(participant_id=chatting.pk, text="And then?", key=new_key())
    history = generation_plan(message_id=third.assistant_message.pk).messages
    assert "goes on." not in " ".join(m["content"] for m in history)
