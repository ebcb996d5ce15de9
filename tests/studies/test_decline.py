"""Declining consent is an outcome: recorded, coded, counted apart, exported, left alone."""

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from studies.models import AssignmentCounter, Event, Participant, Study
from studies.monitor import monitor_snapshot
from studies.services import exports, housekeeping
from studies.services import participants as svc
from studies.services.errors import StudyActionError
from tests.factories import ParticipantFactory, three_arm_study
from tests.studies.test_exports import by_id, read_table
from tests.studies.test_flow import enter, to_brief, url
from tests.studies.test_recruiting import PROLIFIC, prolific

pytestmark = pytest.mark.django_db
P = Participant.Status
Out = Participant.Outcome


@pytest.fixture
def study():
    return three_arm_study(recruiting_source=Study.Source.PROLIFIC)


def decline(client, study, pid="p1", session="s1"):
    enter(client, study, **prolific(pid=pid, session=session))
    return client.post(url("consent", study), {"choice": "decline"})


def test_declining_records_the_status_outcome_end_time_and_event(client, study):
    decline(client, study)
    participant = Participant.objects.get(study=study)
    assert (participant.status, participant.outcome) == (P.DECLINED, Out.DECLINED)
    assert participant.ended_at is not None and participant.consented_at is None
    events = Event.objects.filter(participant=participant, kind="study.participant.declined")
    assert events.count() == 1


def test_declining_assigns_nothing(client, study):
    decline(client, study)
    participant = Participant.objects.get(study=study)
    assert participant.condition is None and participant.task is None
    assert participant.allocation == {} and participant.document_type == ""
    assert not AssignmentCounter.objects.filter(study=study).exists()


def test_declining_shows_the_declined_code_and_the_prolific_redirect(client, study):
    response = decline(client, study)
    assert response.status_code == 302 and response.url == url("closed", study)
    page = client.get(url("closed", study)).content.decode()
    assert "did not consent" in page
    assert study.declined_code in page and study.completion_code not in page
    assert f'href="{PROLIFIC.format(study.declined_code)}"' in page


def test_a_declined_participant_coming_back_sees_the_same_ended_page_with_their_code(client, study):
    decline(client, study)
    again = enter(client, study, **prolific())
    assert again.url == url("closed", study)
    assert client.get(url("consent", study)).url == url("closed", study)
    page = client.get(url("closed", study)).content.decode()
    assert study.declined_code in page and "did not consent" in page
    participant = Participant.objects.get(study=study)
    assert participant.status == P.DECLINED


def test_a_replayed_decline_changes_nothing(client, study):
    decline(client, study)
    before = Event.objects.count()
    response = client.post(url("consent", study), {"choice": "decline"})
    assert response.url == url("closed", study)
    assert Event.objects.count() == before


def test_a_consented_participant_cannot_decline_afterwards(client, study):
    participant = to_brief(client, study)
    response = client.post(url("consent", study), {"choice": "decline"})
    assert response.url == url("brief", study)
    participant.refresh_from_db()
    assert participant.status == P.CONSENTED and participant.outcome == ""
    with pytest.raises(StudyActionError):
        svc.participant_decline(participant_id=participant.pk)


def test_a_declined_participant_can_be_stored_without_condition_or_task(study):
    participant = ParticipantFactory(study=study, status=P.DECLINED, outcome=Out.DECLINED)
    participant.refresh_from_db()
    assert participant.condition_id is None and participant.task_id is None


def test_the_monitor_counts_declines_apart_from_those_in_progress_and_dropped(study):
    ParticipantFactory(study=study)
    for _ in range(2):
        svc.participant_decline(participant_id=ParticipantFactory(study=study).pk)
    totals = monitor_snapshot(study).totals
    assert (totals.entered, totals.in_progress, totals.declined) == (3, 1, 2)
    assert (totals.dropped, totals.completed, totals.consented) == (0, 0, 0)


def test_the_monitor_page_shows_the_declined_count(study):
    svc.participant_decline(participant_id=ParticipantFactory(study=study).pk)
    staff = Client()
    staff.force_login(User.objects.create_superuser("r", "r@example.org", "pw-r-1"))
    page = staff.get(reverse("admin:studies_study_monitor", args=[study.pk])).content.decode()
    assert ">Declined</th>" in page


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_exports_carry_declined_in_status_and_outcome(study, tmp_path, fmt):
    participant = svc.participant_decline(participant_id=ParticipantFactory(study=study).pk)
    result = exports.export_study(study, tmp_path / "out", fmt=fmt)
    row = by_id(read_table(result.path, "participants", fmt)[0])[str(participant.public_id)]
    assert (row["status"], row["outcome"]) == ("declined", "declined")


def test_housekeeping_leaves_declined_participants_alone(study):
    participant = svc.participant_decline(participant_id=ParticipantFactory(study=study).pk)
    long_ago = timezone.now() - timezone.timedelta(days=2)
    Participant.objects.filter(pk=participant.pk).update(
        entered_at=long_ago, last_active_at=long_ago
    )
    study.time_limit_minutes = 1
    study.abandon_after_minutes = 1
    study.save()
    assert housekeeping.participants_abandon_stale() == []
    assert housekeeping.participants_time_out() == []
    participant.refresh_from_db()
    assert participant.status == P.DECLINED and participant.outcome == Out.DECLINED


def test_each_study_has_its_own_declined_code(study):
    other = three_arm_study()
    assert study.declined_code and other.declined_code
    assert study.declined_code != other.declined_code


def test_the_code_page_of_a_declined_participant_offers_no_resume_code(client, study):
    decline(client, study)
    page = client.get(url("closed", study)).content.decode()
    assert "resume code" not in page.lower()


@pytest.mark.parametrize("data", [{}, {"choice": ""}, {"choice": "maybe"}])
def test_a_consent_post_without_a_choice_is_refused_and_records_nothing(client, study, data):
    enter(client, study, **prolific())
    before = Event.objects.count()
    response = client.post(url("consent", study), data)
    assert response.status_code == 400
    assert "I agree" in response.content.decode()
    participant = Participant.objects.get(study=study)
    assert (participant.status, participant.outcome) == (P.ENTERED, "")
    assert Event.objects.count() == before
