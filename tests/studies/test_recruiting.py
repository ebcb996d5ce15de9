"""Recruiting: Prolific and MTurk entry, codes per outcome, repeat workers, test links."""

import pytest
from django.test import Client

from studies.models import AssignmentCounter, Event, Message, Participant, Study
from studies.services import access, outcomes, turns
from studies.services import participants as svc
from studies.services.errors import StudyActionError
from tests.factories import ParticipantFactory, three_arm_study
from tests.studies.conftest import advance_to_chat, complete_reply, new_key
from tests.studies.test_flow import enter, finish_turns, to_chat_with, url

pytestmark = pytest.mark.django_db

PROLIFIC = "https://app.prolific.com/submissions/complete?cc={}"
SURVEY = {
    "document_text": "My post",
    "document_quality": "7",
    "overall_interaction": "7",
    "strengths": "s",
    "weaknesses": "w",
}


@pytest.fixture
def study():
    return three_arm_study(recruiting_source=Study.Source.PROLIFIC)


def prolific(pid="p1", session="s1", study_id="S"):
    return {"PROLIFIC_PID": pid, "STUDY_ID": study_id, "SESSION_ID": session}


def kinds(participant) -> list[str]:
    return list(Event.objects.filter(participant=participant).values_list("kind", flat=True))


def test_prolific_entry_keys_the_participant_by_pid_and_keeps_all_three_params(client, study):
    enter(client, study, **prolific())
    participant = Participant.objects.get(study=study)
    assert participant.external_id == "prolific:p1"
    assert participant.recruiting_source == "prolific"
    assert participant.recruiting_params == prolific()
    assert [a["session_id"] for a in participant.attempts] == ["s1"]


def test_the_same_pid_in_two_studies_makes_two_participants(study):
    other = three_arm_study(recruiting_source=Study.Source.PROLIFIC)
    enter(Client(), study, **prolific())
    enter(Client(), other, **prolific())
    assert Participant.objects.filter(external_id="prolific:p1").count() == 2


def test_a_reentry_with_a_new_session_id_appends_one_attempt_and_an_event(study):
    browser = Client()
    enter(browser, study, **prolific(session="s1"))
    response = enter(browser, study, **prolific(session="s2"))
    assert response.url == url("consent", study)
    participant = Participant.objects.get(study=study)
    assert [a["session_id"] for a in participant.attempts] == ["s1", "s2"]
    assert kinds(participant).count("study.participant.reentered") == 1


def test_a_reentry_with_the_same_session_id_appends_nothing(study):
    browser = Client()
    enter(browser, study, **prolific(session="s1"))
    enter(browser, study, **prolific(session="s2"))
    enter(Client(), study, **prolific(session="s2"))
    enter(Client(), study, **prolific(session="s1"))
    participant = Participant.objects.get(study=study)
    assert [a["session_id"] for a in participant.attempts] == ["s1", "s2"]
    assert kinds(participant).count("study.participant.reentered") == 1


def test_a_returning_pid_with_its_session_id_lands_on_the_same_participant_and_step(study):
    participant = to_chat_with(Client(), study, prolific())
    again = Client()
    response = enter(again, study, **prolific(session="s1"))
    assert response.url == url("chat", study)
    assert Participant.objects.filter(study=study).count() == 1
    assert again.session[f"participant:{study.slug}"] == participant.pk


def complete(client, study, participant, **extra):
    finish_turns(participant, study.min_turns)
    assert client.post(url("finish", study)).url == url("final", study)
    response = client.post(url("final", study), SURVEY | extra)
    assert response.url == url("done", study), response.content.decode()[:2000]
    return client.get(url("done", study)).content.decode()


def test_a_completed_prolific_participant_gets_the_completion_code_and_link(client, study):
    page = complete(client, study, to_chat_with(client, study, prolific()))
    assert study.completion_code in page
    assert f'href="{PROLIFIC.format(study.completion_code)}"' in page


def test_failed_attention_checks_get_the_attention_code(client, study):
    study.attention_checks = [{"question": "Pick B", "choices": ["A", "B"], "answer": 1}]
    study.save()
    page = complete(client, study, to_chat_with(client, study, prolific()), attention_0="0")
    assert f'href="{PROLIFIC.format(study.attention_failed_code)}"' in page
    assert study.completion_code not in page


def test_a_screened_out_participant_gets_the_screened_out_code(client, study):
    study.comprehension_questions = [{"question": "Q", "choices": ["a", "b"], "answer": 0}]
    study.save()
    to_chat_with(client, study, prolific())
    client.post(url("check", study), {"q0": "1"})
    response = client.post(url("check", study), {"q0": "1"})
    assert response.url == url("closed", study)
    page = client.get(url("closed", study)).content.decode()
    assert "did not match the task" in page
    assert f'href="{PROLIFIC.format(study.screened_out_code)}"' in page


def test_a_timed_out_participant_gets_the_timed_out_code_on_their_next_page(client, study):
    participant = to_chat_with(client, study, prolific())
    outcomes.participant_end(participant_id=participant.pk, outcome="timed_out")
    response = client.get(url("chat", study))
    assert response.status_code == 302 and response.url == url("closed", study)
    page = client.get(url("closed", study)).content.decode()
    assert "time for this study has run out" in page
    assert study.timed_out_code in page
    assert f'href="{PROLIFIC.format(study.timed_out_code)}"' in page


def test_a_custom_redirect_url_replaces_the_prolific_default(client, study):
    study.completion_redirect_url = "https://survey.example.org/end/{code}/"
    study.save()
    page = complete(client, study, to_chat_with(client, study, prolific()))
    assert f'href="https://survey.example.org/end/{study.completion_code}/"' in page
    assert "prolific.com" not in page


@pytest.mark.parametrize(
    "outcome,message",
    [("returned", "You returned this study"), ("abandoned", "without activity")],
)
def test_returned_and_abandoned_participants_see_no_code(client, study, outcome, message):
    participant = to_chat_with(client, study, prolific())
    outcomes.participant_end(participant_id=participant.pk, outcome=outcome)
    page = client.get(url("closed", study)).content.decode()
    assert message in page
    codes = [study.completion_code, study.screened_out_code, study.attention_failed_code]
    assert not any(code in page for code in [*codes, study.timed_out_code])
    assert 'id="return-link"' not in page


def test_mturk_entry_stores_worker_assignment_and_hit(client):
    study = three_arm_study(recruiting_source=Study.Source.MTURK)
    params = {"workerId": "W1", "assignmentId": "A1", "hitId": "H1"}
    response = client.get(url("entry", study), params)
    assert response.url == url("consent", study)
    participant = Participant.objects.get(study=study)
    assert participant.external_id == "mturk:W1" and participant.recruiting_source == "mturk"
    assert participant.recruiting_params == params


def test_an_mturk_preview_shows_the_preview_page_and_creates_nothing(client):
    study = three_arm_study(recruiting_source=Study.Source.MTURK)
    params = {"workerId": "W1", "assignmentId": "ASSIGNMENT_ID_NOT_AVAILABLE", "hitId": "H1"}
    response = client.get(url("entry", study), params)
    assert response.status_code == 200 and b"Accept the HIT" in response.content
    assert not Participant.objects.exists() and not Event.objects.exists()


@pytest.fixture
def linked(study):
    other = three_arm_study(recruiting_source=Study.Source.PROLIFIC)
    study.linked_studies.add(other)
    return other


def test_a_worker_from_a_linked_study_is_turned_away_with_a_clear_message(study, linked):
    enter(Client(), study, **prolific())
    response = enter(Client(), linked, **prolific(session="s2"))
    assert b"already taken part in a related study" in response.content
    assert not Participant.objects.filter(study=linked).exists()


def test_links_between_studies_work_both_ways(study, linked):
    enter(Client(), linked, **prolific())
    response = enter(Client(), study, **prolific(session="s2"))
    assert b"already taken part in a related study" in response.content
    assert not Participant.objects.filter(study=study).exists()


def test_unlinked_studies_do_not_block_a_worker(study):
    other = three_arm_study(recruiting_source=Study.Source.PROLIFIC)
    enter(Client(), study, **prolific())
    response = enter(Client(), other, **prolific(session="s2"))
    assert response.url == url("consent", other)
    assert Participant.objects.filter(study=other, external_id="prolific:p1").exists()


def test_a_preview_participant_in_a_linked_study_does_not_block(study, linked):
    ParticipantFactory(study=study, external_id="prolific:p1", is_preview=True)
    response = enter(Client(), linked, **prolific())
    assert response.url == url("consent", linked)
    assert Participant.objects.filter(study=linked).count() == 1


def test_a_plain_link_without_an_id_generates_an_anonymous_one(client):
    study = three_arm_study()
    response = client.get(url("entry", study))
    assert response.url == url("consent", study)
    participant = Participant.objects.get(study=study)
    assert participant.external_id.startswith("anon-") and len(participant.external_id) > 10
    client.get(url("entry", study))
    assert Participant.objects.filter(study=study).count() == 1


def test_a_prolific_study_refuses_a_plain_link_without_an_id(client, study):
    response = client.get(url("entry", study))
    assert b"recruiting platform" in response.content
    assert not Participant.objects.exists()


@pytest.mark.parametrize("params", [{"pid": "p1"}, {"workerId": "W1", "assignmentId": "A1"}])
def test_a_prolific_study_refuses_another_platforms_id(client, study, params):
    response = client.get(url("entry", study), params)
    assert b"recruiting platform" in response.content
    assert not Participant.objects.exists()


def test_a_plain_link_study_accepts_a_prolific_id(client):
    study = three_arm_study()
    assert enter(client, study, **prolific()).url == url("consent", study)
    assert Participant.objects.get(study=study).external_id == "prolific:p1"


@pytest.fixture
def draft():
    return three_arm_study(status=Study.Status.DRAFT)


def test_a_preview_link_works_on_a_draft_study_and_is_marked_everywhere(client, draft):
    response = client.get(access.access_link(draft, "preview"))
    assert response.url == url("consent", draft)
    participant = Participant.objects.get(study=draft)
    assert participant.is_preview and not participant.is_pilot
    assert participant.external_id.startswith("preview-")
    page = client.get(url("consent", draft)).content.decode()
    assert 'class="banner"' in page and "Preview: nothing you do here" in page
    assert not Participant.objects.real().filter(pk=participant.pk).exists()


def test_a_pilot_link_makes_a_pilot_participant(client, draft):
    client.get(access.access_link(draft, "pilot"))
    participant = Participant.objects.get(study=draft)
    assert participant.is_pilot and not participant.is_preview
    assert "Pilot participant" in client.get(url("consent", draft)).content.decode()
    assert not Participant.objects.real().exists()


def test_a_plain_visit_to_a_draft_study_is_refused(client, draft):
    response = client.get(url("entry", draft), {"pid": "x"})
    assert b"not accepting" in response.content
    assert not Participant.objects.exists()


def test_a_tampered_token_is_refused_and_creates_nothing(client, draft):
    link = access.access_link(draft, "preview")
    response = client.get(link[:-3] + ("aaa" if not link.endswith("aaa") else "bbb"))
    assert response.status_code == 403
    assert not Participant.objects.exists() and not Event.objects.exists()


def test_a_token_for_another_study_is_refused(client, draft):
    other = three_arm_study(status=Study.Status.DRAFT)
    token = access.access_token(other, "preview")
    response = client.get(url("entry", draft), {"preview": token})
    assert response.status_code == 403
    assert not Participant.objects.exists()


def test_a_preview_token_offered_as_a_pilot_token_is_refused(client, draft):
    response = client.get(url("entry", draft), {"pilot": access.access_token(draft, "preview")})
    assert response.status_code == 403
    assert not Participant.objects.exists()


def test_a_closed_study_refuses_even_a_valid_token(client, draft):
    draft.status = Study.Status.CLOSED
    draft.save()
    response = client.get(access.access_link(draft, "preview"))
    assert b"not accepting" in response.content
    assert not Participant.objects.exists()


@pytest.mark.parametrize("kind", ["preview", "pilot"])
def test_test_participants_never_touch_the_real_allocation_counters(client, kind):
    study = three_arm_study()
    client.get(access.access_link(study, kind))
    assert client.post(url("consent", study), {"choice": "agree"}).url == url("brief", study)
    strata = list(AssignmentCounter.objects.filter(study=study).values_list("stratum", flat=True))
    assert strata and all(s.startswith(f"{kind}/") for s in strata)
    real = Client()
    enter(real, study, pid="real-1")
    real.post(url("consent", study), {"choice": "agree"})
    after = AssignmentCounter.objects.filter(study=study).values_list("stratum", flat=True)
    assert any(not s.startswith(("preview/", "pilot/")) for s in after)


def test_returning_a_participation_records_the_ending_and_keeps_every_message(study):
    participant = advance_to_chat(ParticipantFactory(study=study))
    reply = turns.turn_start(participant_id=participant.pk, text="hello", key=new_key())
    complete_reply(reply.assistant_message)
    ended = outcomes.participant_end(participant_id=participant.pk, outcome="returned", by="r")
    ended.refresh_from_db()
    assert ended.status == Participant.Status.RETURNED and ended.outcome == "returned"
    assert ended.ended_at is not None
    assert Message.objects.filter(participant=participant).count() == 2
    assert "study.participant.returned" in kinds(participant)


def test_a_completed_participant_cannot_be_ended(client, study):
    participant = to_chat_with(client, study, prolific())
    complete(client, study, participant)
    with pytest.raises(StudyActionError) as exc:
        outcomes.participant_end(participant_id=participant.pk, outcome="timed_out")
    assert exc.value.code == "already_ended"
    participant.refresh_from_db()
    assert participant.status == Participant.Status.COMPLETED
    assert participant.outcome == Participant.Outcome.COMPLETED


def test_an_ended_participant_cannot_be_ended_again(study):
    participant = advance_to_chat(ParticipantFactory(study=study))
    outcomes.participant_end(participant_id=participant.pk, outcome="returned")
    with pytest.raises(StudyActionError) as exc:
        outcomes.participant_end(participant_id=participant.pk, outcome="timed_out")
    assert exc.value.code == "already_ended"
    participant.refresh_from_db()
    assert participant.outcome == "returned"


def test_a_returned_participant_reentering_lands_on_the_closed_page(study):
    participant = to_chat_with(Client(), study, prolific())
    outcomes.participant_end(participant_id=participant.pk, outcome="returned")
    again = Client()
    response = enter(again, study, **prolific(session="s1"))
    assert response.url == url("closed", study)
    assert b"You returned this study" in again.get(url("closed", study)).content
    assert svc.participant_step(Participant.objects.get(pk=participant.pk)) == "closed"


def test_a_stratifying_url_parameter_is_kept_and_decides_the_stratum(client):
    study = three_arm_study(recruiting_source=Study.Source.PROLIFIC, stratify_by="param:band")
    enter(client, study, **prolific(), band="young", other="dropped")
    participant = Participant.objects.get(study=study)
    assert participant.recruiting_params == prolific() | {"band": "young"}
    client.post(url("consent", study), {"choice": "agree"})
    participant.refresh_from_db()
    assert participant.allocation["arm"]["stratum"] == "band=young"
