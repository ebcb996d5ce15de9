"""Scenarios a review of the running-studies work found: each failed before its fix."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from studies import selectors
from studies.models import Event, FinalSurvey, Participant
from studies.services import activity, allocation, housekeeping, turns, versions
from studies.services import participants as svc
from tests.factories import ConditionFactory, ParticipantFactory, three_arm_study
from tests.studies.conftest import advance_to_chat, complete_reply, new_key
from tests.studies.test_flow import to_chat_with, url
from tests.studies.test_quality import QUESTIONS, WRONG

P = Participant.Status
FINAL = {
    "document_text": "My finished personal statement.",
    "document_quality": "8",
    "overall_interaction": "9",
    "strengths": "s",
    "weaknesses": "w",
}


def bind(client, participant):
    session = client.session
    session[f"participant:{participant.study.slug}"] = participant.pk
    session.save()


def at_final(**study_kwargs) -> Participant:
    study = three_arm_study(min_turns=1, rating_every=0, **study_kwargs)
    entered = svc.participant_enter(study=study, external_id="link:f", source="link", params={})
    participant = advance_to_chat(entered.participant)
    started = turns.turn_start(participant_id=participant.pk, text="Help me", key=new_key())
    complete_reply(started.assistant_message)
    svc.participant_finish_chat(participant_id=participant.pk)
    return participant


@pytest.mark.django_db
def test_someone_on_the_final_survey_is_never_timed_out():
    participant = at_final(time_limit_minutes=30)
    Participant.objects.filter(pk=participant.pk).update(
        chat_started_at=timezone.now() - timedelta(minutes=30 + settings.TIMEOUT_GRACE_MINUTES + 1),
        last_active_at=timezone.now() - timedelta(minutes=6),  # writing in another window
    )
    assert housekeeping.participants_time_out() == []


@pytest.mark.django_db
def test_a_final_survey_handed_in_after_being_abandoned_is_kept():
    participant = at_final(abandon_after_minutes=10)
    Participant.objects.filter(pk=participant.pk).update(
        last_active_at=timezone.now() - timedelta(minutes=11)
    )
    assert housekeeping.participants_abandon_stale() == [participant.pk]
    client = Client()
    bind(client, participant)
    assert client.get(url("final", participant.study)).status_code == 200
    response = client.post(url("final", participant.study), FINAL)
    assert response.status_code == 302 and response["Location"].endswith("/done/")
    participant.refresh_from_db()
    assert participant.status == P.COMPLETED
    assert FinalSurvey.objects.filter(participant=participant).exists()
    done = Event.objects.get(participant=participant, kind="study.participant.completed")
    assert done.payload["late"] == "abandoned"


@pytest.mark.django_db
def test_a_double_clicked_wrong_check_counts_one_attempt(client):
    study = three_arm_study(comprehension_questions=QUESTIONS)
    participant = to_chat_with(client, study, {"pid": "p1"})
    for _ in range(2):  # the same form (attempt 0) submitted twice
        client.post(url("check", study), WRONG | {"attempt": "0"})
    participant.refresh_from_db()
    assert (participant.status, participant.comprehension_failures) == (P.BRIEFED, 1)


@pytest.mark.django_db
def test_an_idle_but_visible_tab_does_not_keep_a_participant_forever():
    study = three_arm_study(abandon_after_minutes=10)
    participant = advance_to_chat(ParticipantFactory(study=study))
    Participant.objects.filter(pk=participant.pk).update(
        last_active_at=timezone.now() - timedelta(hours=2)
    )
    activity.activity_record(participant_id=participant.pk, signal="idle", payload={"page": True})
    assert housekeeping.participants_abandon_stale() == [participant.pk]


@pytest.mark.django_db
def test_a_double_clicked_consent_goes_on_to_the_brief(monkeypatch):
    study = three_arm_study()
    participant = svc.participant_enter(
        study=study, external_id="link:c", source="link", params={}
    ).participant
    stale = selectors.participant_for_page(participant.pk)
    svc.participant_consent(participant_id=participant.pk)  # the first click committed
    original = selectors.participant_for_page
    calls = iter([stale])  # the second click read the participant before that commit
    monkeypatch.setattr(
        selectors, "participant_for_page", lambda pid: next(calls, None) or original(pid)
    )
    client = Client()
    bind(client, participant)
    response = client.post(url("consent", study), {"choice": "agree"})
    assert response.status_code == 302 and response["Location"].endswith("/brief/")


@pytest.mark.django_db
def test_a_participant_completed_before_outcomes_existed_still_sees_the_code():
    study = three_arm_study()
    participant = advance_to_chat(ParticipantFactory(study=study))
    Participant.objects.filter(pk=participant.pk).update(
        status=P.COMPLETED, completed_at=timezone.now(), outcome=""
    )
    client = Client()
    bind(client, participant)
    assert study.completion_code in client.get(url("done", study)).content.decode()


@pytest.mark.django_db
def test_an_arm_added_between_entry_and_consent_is_pinned_too():
    study = three_arm_study()
    participant = svc.participant_enter(
        study=study, external_id="link:x", source="link", params={}
    ).participant
    added = ConditionFactory(
        study=study, key="newarm", endpoint=study.conditions.first().endpoint, system_prompt="none"
    )
    study.conditions.exclude(pk=added.pk).update(is_active=False)
    versions.version_publish(study)
    svc.participant_consent(participant_id=participant.pk)
    participant.refresh_from_db()
    assert participant.condition.key == "newarm"
    assert participant.version.number == 2
    assert versions.arm_settings(participant) is not None


@pytest.mark.django_db
def test_editing_the_study_does_not_change_a_chat_under_way():
    study = three_arm_study(min_turns=1, rating_every=0)
    participant = svc.participant_enter(
        study=study, external_id="link:y", source="link", params={}
    ).participant
    participant = advance_to_chat(participant)
    started = turns.turn_start(participant_id=participant.pk, text="Help me", key=new_key())
    complete_reply(started.assistant_message)
    study.min_turns, study.rating_every = 5, 1
    study.save()
    versions.version_publish(study)
    assert selectors.chat_state(participant_id=participant.pk)["min_turns"] == 1
    svc.participant_finish_chat(participant_id=participant.pk)  # still one turn for them


def test_a_stratifying_parameter_is_normalised():
    strata = {
        allocation.arm_stratum(stratify_by="param:c", params={"c": v}, document_type="x")
        for v in ["US", " us", "us ", "Us"]
    }
    assert strata == {"c=us"}
