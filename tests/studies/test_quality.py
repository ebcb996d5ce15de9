"""Quality controls: comprehension and attention checks, message length, pastes, time limits,
exclusion rules."""

from datetime import timedelta

import pytest
from channels.db import database_sync_to_async as sync_to_async
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from studies import selectors
from studies.models import Event, FinalSurvey, Message, Participant
from studies.services import exclusions, outcomes, turns
from studies.services import participants as svc
from studies.services.errors import StudyActionError
from tests.factories import ParticipantFactory, three_arm_study
from tests.studies.conftest import advance_to_chat, complete_reply, new_key
from tests.studies.test_consumer import (
    connect,
    frames_until,
    make_chatting,
    messages_of,
    send_turn,
    settled,
)
from tests.studies.test_flow import enter, finish_turns, to_chat_with, url

pytestmark = pytest.mark.django_db

QUESTIONS = [
    {"question": "Who writes the document?", "choices": ["The assistant", "You"], "answer": 1},
    {"question": "How many turns at least?", "choices": ["Two", "Ten"], "answer": 0},
]
RIGHT = {"q0": "1", "q1": "0"}
WRONG = {"q0": "0", "q1": "0"}


def kinds(participant) -> list[str]:
    return list(Event.objects.filter(participant=participant).values_list("kind", flat=True))


@pytest.fixture
def checked_study():
    return three_arm_study(comprehension_questions=QUESTIONS)


@pytest.fixture
def at_check(client, checked_study):
    """A participant who has just read the brief of a study with a comprehension check."""
    return to_chat_with(client, checked_study, {"pid": "p1"})


def test_after_the_brief_the_participant_is_sent_to_the_check(client, checked_study, at_check):
    assert at_check.status == Participant.Status.BRIEFED and at_check.chat_started_at is None
    response = client.get(url("chat", checked_study))
    assert response.status_code == 302 and response.url == url("check", checked_study)
    page = client.get(url("check", checked_study)).content.decode()
    assert "Who writes the document?" in page and "Check my answers" in page


def test_right_answers_open_the_chat_and_start_its_clock(client, checked_study, at_check):
    response = client.post(url("check", checked_study), RIGHT)
    assert response.url == url("chat", checked_study)
    at_check.refresh_from_db()
    assert at_check.status == Participant.Status.CHATTING
    assert at_check.chat_started_at is not None and at_check.comprehension_failures == 0
    assert "study.check.passed" in kinds(at_check)


def test_one_wrong_answer_leaves_one_more_attempt(client, checked_study, at_check):
    response = client.post(url("check", checked_study), WRONG)
    assert response.status_code == 400
    assert "one more attempt" in response.content.decode()
    at_check.refresh_from_db()
    assert at_check.status == Participant.Status.BRIEFED
    assert at_check.comprehension_failures == 1 and at_check.chat_started_at is None


def test_a_second_wrong_answer_screens_the_participant_out(client, checked_study, at_check):
    client.post(url("check", checked_study), WRONG)
    response = client.post(url("check", checked_study), {"q0": "1", "q1": "1"})
    assert response.status_code == 302 and response.url == url("closed", checked_study)
    at_check.refresh_from_db()
    assert at_check.status == Participant.Status.EXCLUDED
    assert at_check.outcome == Participant.Outcome.SCREENED_OUT
    assert at_check.exclusion_reason and at_check.excluded_at is not None
    assert at_check.chat_started_at is None
    events = kinds(at_check)
    assert events.count("study.check.failed") == 2
    assert events.count("study.participant.screened_out") == 1
    page = client.get(url("closed", checked_study)).content.decode()
    assert checked_study.screened_out_code in page
    assert checked_study.completion_code not in page


def test_a_reload_or_a_new_entry_does_not_reset_the_attempts(client, checked_study, at_check):
    client.post(url("check", checked_study), WRONG)
    assert client.get(url("check", checked_study)).status_code == 200
    again = Client()  # another browser: back in with the resume code their pages showed
    assert enter(again, checked_study, pid="p1").url == url("resume", checked_study)
    code = client.session[f"resume_code:{checked_study.slug}"]
    assert again.post(url("resume", checked_study), {"code": code}).url == url(
        "check", checked_study
    )
    at_check.refresh_from_db()
    assert at_check.comprehension_failures == 1
    response = again.post(url("check", checked_study), WRONG)
    assert response.url == url("closed", checked_study)
    at_check.refresh_from_db()
    assert at_check.outcome == Participant.Outcome.SCREENED_OUT


def test_a_replayed_answer_after_screening_out_changes_nothing(client, checked_study, at_check):
    client.post(url("check", checked_study), WRONG)
    client.post(url("check", checked_study), WRONG)
    events = Event.objects.count()
    response = client.post(url("check", checked_study), RIGHT)
    assert response.url == url("closed", checked_study)
    at_check.refresh_from_db()
    assert at_check.comprehension_failures == 2 and at_check.status == Participant.Status.EXCLUDED
    assert Event.objects.count() == events


def test_an_empty_answer_counts_as_a_wrong_attempt(client, checked_study, at_check):
    response = client.post(url("check", checked_study), {})
    assert response.status_code == 400
    at_check.refresh_from_db()
    assert at_check.comprehension_failures == 1


def test_without_questions_the_brief_leads_straight_to_the_chat(client):
    study = three_arm_study()
    participant = to_chat_with(client, study, {"pid": "p1"})
    assert participant.status == Participant.Status.CHATTING
    assert participant.chat_started_at is not None
    response = client.get(url("check", study))
    assert response.status_code == 302 and response.url == url("chat", study)


ATTENTION = [
    {"question": "Choose 'Blue'", "choices": ["Red", "Blue"], "answer": 1},
    {"question": "Choose 'Three'", "choices": ["One", "Three"], "answer": 1},
    {"question": "Choose 'Yes'", "choices": ["Yes", "No"], "answer": 0},
]
SURVEY = {
    "document_text": "My post",
    "document_quality": "6",
    "overall_interaction": "8",
    "strengths": "s",
    "weaknesses": "w",
}


def at_final(client, study):
    participant = to_chat_with(client, study, {"pid": "p1"})
    finish_turns(participant, study.min_turns)
    assert client.post(url("finish", study)).url == url("final", study)
    return participant


def test_the_final_survey_shows_the_attention_checks(client):
    study = three_arm_study(attention_checks=ATTENTION)
    at_final(client, study)
    page = client.get(url("final", study)).content.decode()
    assert "Choose &#x27;Blue&#x27;" in page and 'name="attention_2"' in page


def test_wrong_attention_answers_at_the_threshold_fail_but_keep_the_data(client):
    study = three_arm_study(attention_checks=ATTENTION, attention_fail_threshold=2)
    participant = at_final(client, study)
    answers = {"attention_0": "0", "attention_1": "0", "attention_2": "0"}
    assert client.post(url("final", study), SURVEY | answers).url == url("done", study)
    participant.refresh_from_db()
    assert participant.status == Participant.Status.COMPLETED
    assert participant.outcome == Participant.Outcome.FAILED_ATTENTION
    assert participant.attention_failures == 2
    survey = FinalSurvey.objects.get(participant=participant)
    assert survey.document_text == "My post" and survey.overall_interaction == 8
    assert survey.extra_answers == {"attention": [0, 0, 0]}
    page = client.get(url("done", study)).content.decode()
    assert study.attention_failed_code in page and study.completion_code not in page


def test_wrong_attention_answers_below_the_threshold_complete_normally(client):
    study = three_arm_study(attention_checks=ATTENTION, attention_fail_threshold=2)
    participant = at_final(client, study)
    answers = {"attention_0": "0", "attention_1": "1", "attention_2": "0"}
    client.post(url("final", study), SURVEY | answers)
    participant.refresh_from_db()
    assert participant.outcome == Participant.Outcome.COMPLETED
    assert participant.attention_failures == 1


def test_the_attention_threshold_is_capped_at_the_number_of_checks(client):
    study = three_arm_study(attention_checks=ATTENTION[:1], attention_fail_threshold=5)
    participant = at_final(client, study)
    client.post(url("final", study), SURVEY | {"attention_0": "0"})
    participant.refresh_from_db()
    assert participant.outcome == Participant.Outcome.FAILED_ATTENTION


def test_an_unanswered_attention_check_keeps_the_participant_on_the_survey(client):
    study = three_arm_study(attention_checks=ATTENTION)
    participant = at_final(client, study)
    response = client.post(url("final", study), SURVEY | {"attention_0": "1"})
    assert response.status_code == 400
    participant.refresh_from_db()
    assert participant.status == Participant.Status.FINAL
    assert not FinalSurvey.objects.filter(participant=participant).exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
async def test_a_too_short_message_is_refused_and_nothing_is_stored(fake_model):
    participant = await make_chatting(fake_model.base_url, min_user_message_chars=20)
    comm, connected, _ = await connect(participant)
    assert connected
    state = await comm.receive_json_from()
    assert state["min_chars"] == 20
    await send_turn(comm, "too short")
    error = (await frames_until(comm, {"error"}))[-1]
    assert error["code"] == "too_short" and "20" in error["message"]
    assert await messages_of(participant) == []
    await send_turn(comm, "This message is long enough to send.")
    assert (await frames_until(comm, {"complete", "failed"}))[-1]["type"] == "complete"
    await settled()
    assert [m.role for m in await messages_of(participant)] == ["user", "assistant"]
    await comm.disconnect()


@sync_to_async
def paste_events(participant) -> list[dict]:
    rows = Event.objects.filter(participant=participant, kind="study.chat.paste")
    return list(rows.values_list("payload", flat=True))


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
@pytest.mark.parametrize("detect", [True, False])
async def test_a_paste_is_recorded_only_when_the_study_detects_pastes(fake_model, detect):
    participant = await make_chatting(fake_model.base_url, detect_paste=detect)
    comm, _, _ = await connect(participant)
    assert (await comm.receive_json_from())["detect_paste"] is detect
    await comm.send_json_to({"type": "paste", "chars": 420})
    await comm.send_json_to({"type": "sync"})
    frames = await frames_until(comm, {"state"})
    assert [f["type"] for f in frames] == ["state"]
    assert await paste_events(participant) == ([{"chars": 420}] if detect else [])
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
@pytest.mark.parametrize("chars", ["12", -1, True, None, 1.5])
async def test_a_malformed_paste_notice_gets_an_error_frame(fake_model, chars):
    participant = await make_chatting(fake_model.base_url, detect_paste=True)
    comm, _, _ = await connect(participant)
    await comm.receive_json_from()
    await comm.send_json_to({"type": "paste", "chars": chars})
    frame = await comm.receive_json_from()
    assert frame["type"] == "error" and frame["code"] == "malformed"
    assert await paste_events(participant) == []
    await comm.disconnect()


@pytest.fixture
def overtime(db):
    """A participant whose 10-minute chat started 11 minutes ago, with no turn completed."""
    study = three_arm_study(time_limit_minutes=10, time_warning_minutes=3, min_turns=4)
    participant = advance_to_chat(ParticipantFactory(study=study))
    started = timezone.now() - timedelta(minutes=11)
    Participant.objects.filter(pk=participant.pk).update(chat_started_at=started)
    participant.refresh_from_db()
    return participant


def test_a_turn_after_the_time_limit_is_refused(overtime):
    with pytest.raises(StudyActionError) as exc:
        turns.turn_start(participant_id=overtime.pk, text="one more", key=new_key())
    assert exc.value.code == "time_up"
    assert not Message.objects.filter(participant=overtime).exists()


def test_the_chat_state_reports_the_time_up_and_allows_finishing(overtime):
    state = selectors.chat_state(participant_id=overtime.pk)
    deadline = overtime.chat_started_at + timedelta(minutes=10)
    assert state["time_up"] is True
    assert state["deadline"] == deadline.isoformat()
    assert state["seconds_left"] == 0
    assert state["warning_seconds"] == 180
    assert state["completed_turns"] == 0 and state["can_finish"] is True


def test_the_chat_state_before_the_limit_does_not_allow_finishing_early(db):
    study = three_arm_study(time_limit_minutes=10, min_turns=4)
    participant = advance_to_chat(ParticipantFactory(study=study))
    state = selectors.chat_state(participant_id=participant.pk)
    assert state["time_up"] is False and state["can_finish"] is False
    assert 0 < state["seconds_left"] <= 600 and state["deadline"] is not None


def test_a_chat_without_a_time_limit_has_no_deadline(chatting):
    state = selectors.chat_state(participant_id=chatting.pk)
    assert state["deadline"] is None and state["seconds_left"] is None
    assert state["time_up"] is False


def test_finishing_after_the_time_limit_works_below_the_minimum_turns(overtime):
    svc.participant_finish_chat(participant_id=overtime.pk)
    overtime.refresh_from_db()
    assert overtime.status == Participant.Status.FINAL
    event = Event.objects.get(participant=overtime, kind="study.chat.finished")
    assert event.payload == {"turns": 0, "time_up": True}


RULES = {"min_active_minutes": 5, "failed_attention": True, "min_user_chars": 30, "min_turns": 2}


def finished(study, texts: list[str], *, active_minutes: float = 10, attention=(1,)):
    """A participant who chatted `texts` (one turn each) and completed the final survey."""
    participant = advance_to_chat(ParticipantFactory(study=study))
    for text in texts:
        reply = turns.turn_start(participant_id=participant.pk, text=text, key=new_key())
        complete_reply(reply.assistant_message)
    svc.participant_finish_chat(participant_id=participant.pk)
    answers = svc.FinalAnswers("doc", 5, 5, "s", "w", attention=tuple(attention))
    svc.participant_submit_final(participant_id=participant.pk, answers=answers)
    Participant.objects.filter(pk=participant.pk).update(active_seconds=active_minutes * 60)
    return participant


@pytest.fixture
def ruled(db):
    return three_arm_study(
        exclusion_rules=RULES,
        min_turns=1,
        rating_every=0,
        attention_checks=ATTENTION[:1],
    )


LONG = "Please help me write about my garden."


def test_exclusion_rules_mark_each_rule_breaker_with_a_readable_reason(ruled):
    good = finished(ruled, [LONG, LONG])
    idle = finished(ruled, [LONG, LONG], active_minutes=1)
    inattentive = finished(ruled, [LONG, LONG], attention=(0,))
    terse = finished(ruled, ["hi", "ok"])
    short = finished(ruled, [LONG])
    marked = exclusions.exclusions_apply(study_id=ruled.pk, by="researcher")
    assert set(marked) == {idle.pk, inattentive.pk, terse.pk, short.pk}
    assert "min_active_minutes" in marked[idle.pk] and "1.0 min" in marked[idle.pk]
    assert "failed attention checks" in marked[inattentive.pk]
    assert "wrote 4 characters < 30" in marked[terse.pk]
    assert "1 turns < 2" in marked[short.pk]
    for participant in (idle, inattentive, terse, short):
        participant.refresh_from_db()
        assert participant.exclusion_reason == marked[participant.pk]
        assert participant.excluded_at is not None
        assert participant.status == Participant.Status.COMPLETED
    good.refresh_from_db()
    assert good.excluded_at is None and good.exclusion_reason == ""


def test_exclusion_rules_delete_nothing_and_mark_nobody_twice(ruled):
    finished(ruled, [LONG, LONG], active_minutes=1)
    finished(ruled, ["hi", "ok"])
    counts = (Participant.objects.count(), Message.objects.count(), FinalSurvey.objects.count())
    assert len(exclusions.exclusions_apply(study_id=ruled.pk)) == 2
    assert (
        Participant.objects.count(),
        Message.objects.count(),
        FinalSurvey.objects.count(),
    ) == counts
    events = Event.objects.count()
    assert exclusions.exclusions_apply(study_id=ruled.pk) == {}
    assert Event.objects.count() == events


def test_exclusion_rules_leave_already_excluded_and_unfinished_participants_alone(ruled):
    manual = finished(ruled, ["hi"], active_minutes=0)
    outcomes.participant_exclude(participant_id=manual.pk, reason="spoke to the assistant in Latin")
    chatting = advance_to_chat(ParticipantFactory(study=ruled))
    assert exclusions.exclusions_apply(study_id=ruled.pk) == {}
    manual.refresh_from_db()
    assert manual.exclusion_reason == "spoke to the assistant in Latin"
    chatting.refresh_from_db()
    assert chatting.excluded_at is None and chatting.status == Participant.Status.CHATTING


def test_rules_problems_flags_unknown_rules_and_bad_types():
    problems = exclusions.rules_problems(
        {
            "min_turnz": 3,
            "min_active_minutes": "5",
            "min_user_chars": -1,
            "min_turns": True,
            "failed_attention": "yes",
        }
    )
    assert "unknown rule 'min_turnz'" in problems
    for name in ("min_active_minutes", "min_user_chars", "min_turns", "failed_attention"):
        assert any(p.startswith(name) for p in problems), name
    assert exclusions.rules_problems(RULES) == []
    assert exclusions.rules_problems({}) == []


def test_broken_rules_are_refused_before_anyone_is_marked(ruled):
    participant = finished(ruled, ["hi"])
    ruled.exclusion_rules = {"min_turns": "two"}
    ruled.save()
    with pytest.raises(ValueError, match="min_turns"):
        exclusions.exclusions_apply(study_id=ruled.pk)
    participant.refresh_from_db()
    assert participant.excluded_at is None


def test_broken_rules_are_refused_even_when_nobody_has_finished(ruled):
    ruled.exclusion_rules = {"min_turnz": 2}
    ruled.save()
    with pytest.raises(ValueError, match="min_turnz"):
        exclusions.exclusions_apply(study_id=ruled.pk)


def admin_messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_the_admin_action_applies_the_exclusion_rules(researcher, ruled):
    idle = finished(ruled, [LONG, LONG], active_minutes=1)
    response = researcher.post(
        reverse("admin:studies_study_changelist"),
        {"action": "apply_exclusion_rules", "_selected_action": [ruled.pk]},
        follow=True,
    )
    assert f"{ruled.slug}: 1 participant(s) excluded." in admin_messages(response)
    idle.refresh_from_db()
    assert "min_active_minutes" in idle.exclusion_reason


def exclude_action(client, participant, reason: str):
    return client.post(
        reverse("admin:studies_participant_changelist"),
        {"action": "exclude_with_reason", "_selected_action": [participant.pk], "reason": reason},
        follow=True,
    )


def test_excluding_in_the_admin_requires_a_reason(researcher, chatting):
    response = exclude_action(researcher, chatting, "   ")
    assert "Give a reason for the exclusion." in admin_messages(response)
    chatting.refresh_from_db()
    assert chatting.excluded_at is None and chatting.status == Participant.Status.CHATTING


def test_excluding_in_the_admin_keeps_the_reason_and_the_data(researcher, chatting):
    reply = turns.turn_start(participant_id=chatting.pk, text="hello", key=new_key())
    complete_reply(reply.assistant_message)
    response = exclude_action(researcher, chatting, "bot-like answers")
    assert any("bot-like answers" in m for m in admin_messages(response))
    chatting.refresh_from_db()
    assert chatting.exclusion_reason == "bot-like answers" and chatting.excluded_at is not None
    assert chatting.status == Participant.Status.EXCLUDED
    assert Message.objects.filter(participant=chatting).count() == 2
    event = Event.objects.get(participant=chatting, kind="study.participant.excluded")
    assert event.payload["by"] == "researcher"
