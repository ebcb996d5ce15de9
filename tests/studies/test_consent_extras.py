"""Optional extras at consent: use for training and public sharing, asked only where the study
asks, opt-in (nothing ticked means no), recorded on the participant and its event, exported."""

import pytest

from studies.models import Event, Participant
from studies.services import exports
from studies.services import participants as svc
from tests.factories import ParticipantFactory, three_arm_study
from tests.studies.test_exports import by_id, read_table
from tests.studies.test_flow import enter, url
from tests.studies.test_recruiting import prolific

pytestmark = pytest.mark.django_db


@pytest.fixture
def study():
    return three_arm_study(asks_training_consent=True, asks_sharing_consent=True)


def agree(client, study, pid, **extras):
    enter(client, study, **prolific(pid=pid, session=pid))
    return client.post(url("consent", study), {"choice": "agree", **extras})


def test_the_consent_page_offers_the_extras_the_study_asks_for_unticked(client, study):
    enter(client, study, **prolific(pid="p1", session="s1"))
    page = client.get(url("consent", study)).content.decode()
    assert 'name="consent_training"' in page and 'name="consent_sharing"' in page
    assert "checked" not in page


def test_ticked_extras_are_recorded_and_unticked_ones_are_a_no(client, study):
    agree(client, study, "p1", consent_training="yes")
    agree(client, study, "p2", consent_training="yes", consent_sharing="yes")
    agree(client, study, "p3")
    people = {p.external_id.split(":")[-1]: p for p in Participant.objects.filter(study=study)}
    got = {pid: (p.consent_training, p.consent_sharing) for pid, p in people.items()}
    assert got == {"p1": (True, False), "p2": (True, True), "p3": (False, False)}
    event = Event.objects.get(participant=people["p2"], kind="study.participant.consented")
    assert event.payload["extras"] == {"training": True, "sharing": True}


def test_a_study_that_does_not_ask_records_nothing_even_if_a_form_says_yes(client):
    study = three_arm_study()
    agree(client, study, "p1", consent_training="yes", consent_sharing="yes")
    person = Participant.objects.get(study=study)
    assert (person.consent_training, person.consent_sharing) == (None, None)
    page = client.get(url("consent", study)).content.decode()
    assert 'name="consent_training"' not in page


def test_the_service_takes_the_extras_and_the_export_carries_them(study, tmp_path):
    person = ParticipantFactory(study=study)
    svc.participant_consent(participant_id=person.pk, training=False, sharing=True)
    person.refresh_from_db()
    assert (person.consent_training, person.consent_sharing) == (False, True)
    exports.export_study(study, tmp_path / "out", fmt="csv")
    rows, _ = read_table(tmp_path / "out", "participants", "csv")
    row = by_id(rows)[str(person.public_id)]
    assert (row["consent_training"], row["consent_sharing"]) == ("false", "true")
