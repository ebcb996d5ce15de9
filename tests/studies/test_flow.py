"""The participant pages, driven with Django's test client (no JavaScript)."""

import pytest
from django.test import Client
from django.urls import reverse

from studies.models import AssignmentCounter, Event, IntentAnswer, Participant, Study
from studies.services import turns
from tests.factories import three_arm_study
from tests.studies.conftest import complete_reply, new_key

pytestmark = pytest.mark.django_db


def url(name, study):
    return reverse(f"studies:{name}", args=[study.slug])


def enter(client, study, **params):
    return client.get(
        url("entry", study), params or {"PROLIFIC_PID": "p1", "STUDY_ID": "s", "SESSION_ID": "x"}
    )


def to_brief(client, study):
    enter(client, study)
    client.post(url("consent", study), {"choice": "agree"})
    return Participant.objects.get(study=study)


def to_chat(client, study):
    return to_chat_with(client, study, None)


def to_chat_with(client, study, params):
    if params:
        enter(client, study, **params)
        client.post(url("consent", study), {"choice": "agree"})
        participant = Participant.objects.get(study=study)
    else:
        participant = to_brief(client, study)
    task = study.tasks.filter(document_type=participant.document_type).first()
    client.post(url("brief", study), {"task": task.pk})
    client.post(url("brief", study), {"q0": "friends", "q1": "warm"})
    participant.refresh_from_db()
    return participant


@pytest.fixture
def study():
    return three_arm_study()


def test_entry_creates_the_participant_with_recruiting_params_and_sends_them_to_consent(
    client, study
):
    response = enter(client, study)
    assert response.status_code == 302 and response.url == url("consent", study)
    participant = Participant.objects.get(study=study)
    assert participant.external_id == "prolific:p1"
    assert participant.recruiting_params == {
        "PROLIFIC_PID": "p1",
        "STUDY_ID": "s",
        "SESSION_ID": "x",
    }


def test_the_same_external_id_returns_to_the_same_participant_and_step(study):
    first = Client()
    participant = to_brief(first, study)
    other_browser = Client()
    response = enter(other_browser, study)
    assert response.url == url("brief", study)
    assert Participant.objects.filter(study=study).count() == 1
    assert other_browser.session[f"participant:{study.slug}"] == participant.pk


def test_steps_cannot_be_skipped_by_editing_the_url(client, study):
    enter(client, study)
    for step in ["brief", "chat", "final", "done"]:
        response = client.get(url(step, study))
        assert response.status_code == 302 and response.url == url("consent", study)


def test_a_replayed_consent_form_changes_nothing(client, study):
    participant = to_brief(client, study)
    before = (participant.condition_id, participant.allocation, Event.objects.count())
    response = client.post(url("consent", study), {"choice": "agree"})
    assert response.url == url("brief", study)
    participant.refresh_from_db()
    assert (participant.condition_id, participant.allocation, Event.objects.count()) == before
    assert AssignmentCounter.objects.get(study=study, stratum="all").next_position == 1


def test_declining_consent_ends_participation_without_assignment(client, study):
    enter(client, study)
    response = client.post(url("consent", study), {"choice": "decline"})
    assert response.url == url("closed", study)
    assert b"did not consent" in client.get(response.url).content
    participant = Participant.objects.get(study=study)
    assert participant.condition is None and participant.status == Participant.Status.DECLINED


def test_a_topic_of_another_document_type_is_refused(client, study):
    participant = to_brief(client, study)
    foreign = study.tasks.exclude(document_type=participant.document_type).first()
    response = client.post(url("brief", study), {"task": foreign.pk})
    assert response.status_code == 400
    participant.refresh_from_db()
    assert participant.task is None


def test_unanswered_intent_questions_keep_the_participant_on_the_brief(client, study):
    participant = to_brief(client, study)
    task = study.tasks.filter(document_type=participant.document_type).first()
    client.post(url("brief", study), {"task": task.pk})
    response = client.post(url("brief", study), {"q0": "only one"})
    assert response.status_code == 200 and b"required" in response.content
    participant.refresh_from_db()
    assert participant.status == Participant.Status.CONSENTED
    assert not IntentAnswer.objects.filter(participant=participant).exists()


def test_the_brief_answers_htmx_with_the_partial_only(client, study):
    to_brief(client, study)
    response = client.get(url("brief", study), headers={"HX-Request": "true"})
    assert b'id="brief-step"' in response.content and b"<html" not in response.content


def test_finishing_before_the_minimum_turns_is_refused(client, study):
    participant = to_chat(client, study)
    response = client.post(url("finish", study))
    assert response.status_code == 400 and b"at least" in response.content
    participant.refresh_from_db()
    assert participant.status == Participant.Status.CHATTING


def finish_turns(participant, n):
    for i in range(n):
        reply = turns.turn_start(
            participant_id=participant.pk, text=f"m{i}", key=new_key()
        ).assistant_message
        outcome = complete_reply(reply, text="ok")
        if outcome.rating_due_after:
            turns.rating_record(
                participant_id=participant.pk, after_turn=outcome.rating_due_after, score=6
            )


def test_the_whole_flow_ends_with_the_completion_code_and_redirect(client, study):
    study.completion_redirect_url = "https://app.prolific.com/submissions/complete?cc={code}"
    study.save()
    participant = to_chat(client, study)
    finish_turns(participant, study.min_turns)
    assert client.post(url("finish", study)).url == url("final", study)
    response = client.post(
        url("final", study),
        {
            "document_text": "My post",
            "document_quality": "8",
            "overall_interaction": "9",
            "strengths": "asked questions",
            "weaknesses": "slow",
        },
    )
    assert response.url == url("done", study)
    page = client.get(url("done", study)).content.decode()
    assert study.completion_code in page
    assert f"cc={study.completion_code}" in page
    participant.refresh_from_db()
    assert participant.status == Participant.Status.COMPLETED
    assert participant.final_survey.document_quality == 8
    assert participant.wall_seconds is not None


def test_an_invalid_final_survey_is_refused_and_nothing_is_stored(client, study):
    participant = to_chat(client, study)
    finish_turns(participant, study.min_turns)
    client.post(url("finish", study))
    response = client.post(url("final", study), {"document_text": "x", "document_quality": "11"})
    assert response.status_code == 400
    participant.refresh_from_db()
    assert participant.status == Participant.Status.FINAL
    assert not hasattr(participant, "final_survey")


def test_a_stranger_never_sees_another_participants_chat(study):
    owner = Client()
    to_chat(owner, study)
    stranger = Client()
    response = stranger.get(url("chat", study))
    assert response.status_code == 302 and response.url == url("entry", study)


def test_a_recruiting_platform_study_needs_its_id(client, study):
    study.recruiting_source = Study.Source.PROLIFIC
    study.save()
    response = client.get(url("entry", study))
    assert b"recruiting platform" in response.content
    assert not Participant.objects.exists()


def test_a_closed_study_admits_no_new_participant(client, study):
    study.status = Study.Status.CLOSED
    study.save()
    response = enter(client, study)
    assert b"not accepting" in response.content
    assert not Participant.objects.exists()


def test_mturk_preview_creates_nobody(client, study):
    response = client.get(
        url("entry", study), {"assignmentId": "ASSIGNMENT_ID_NOT_AVAILABLE", "hitId": "h"}
    )
    assert b"Accept the HIT" in response.content
    assert not Participant.objects.exists()


def test_forms_without_a_csrf_token_are_rejected(study):
    client = Client(enforce_csrf_checks=True)
    enter(client, study)
    response = client.post(url("consent", study), {"choice": "agree"})
    assert response.status_code == 403
    assert Participant.objects.get(study=study).status == Participant.Status.ENTERED


def done_page(client, study, participant):
    """Chat the minimum turns, submit a valid final survey and return the done page."""
    finish_turns(participant, study.min_turns)
    client.post(url("finish", study))
    client.post(url("final", study), {
        "document_text": "x", "document_quality": "5", "overall_interaction": "5",
        "strengths": "s", "weaknesses": "w",
    })  # fmt: skip
    return client.get(url("done", study)).content.decode()


def test_prolific_participants_are_sent_back_to_prolific_by_default(client, study):
    page = done_page(client, study, to_chat(client, study))
    assert f"https://app.prolific.com/submissions/complete?cc={study.completion_code}" in page


def test_a_plain_link_participant_gets_the_code_without_a_redirect(client, study):
    page = done_page(client, study, to_chat_with(client, study, {"pid": "p9"}))
    assert study.completion_code in page and "prolific.com" not in page
