"""Consent's locked section is tiny: a study's arrivals queue on its counter rows, so only the
writes that need the allocation run while those rows are locked."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from studies.models import AssignmentCounter, Participant
from studies.services import allocation, outcomes
from studies.services import participants as svc
from studies.services.errors import StudyActionError
from tests.factories import ParticipantFactory, three_arm_study

pytestmark = pytest.mark.django_db

TRANSACTION_CONTROL = re.compile(r"^(SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT|COMMIT)\b")


def statement(sql: str) -> str:
    """ "UPDATE studies_participant", "SELECT studies_condition ... FOR UPDATE" and the like."""
    verb = sql.split(None, 1)[0].upper()
    table = re.search(r'(?:FROM|UPDATE|INTO)\s+"(\w+)"', sql)
    name = f"{verb} {table[1] if table else '?'}"
    return name + (" FOR UPDATE" if sql.rstrip().endswith("FOR UPDATE") else "")


def consent_statements(participant: Participant) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        svc.participant_consent(participant_id=participant.pk)
    return [statement(q["sql"]) for q in queries if not TRANSACTION_CONTROL.match(q["sql"].upper())]


def after_the_counter_lock(statements: list[str]) -> list[str]:
    first = statements.index("SELECT studies_assignmentcounter FOR UPDATE")
    return statements[first + 1 :]


@pytest.mark.parametrize("stratify_by", ["", "document_type"])
def test_under_the_counter_locks_only_the_counters_participant_and_event_are_written(stratify_by):
    study = three_arm_study(block_size=3, stratify_by=stratify_by)
    svc.participant_consent(participant_id=ParticipantFactory(study=study).pk)
    statements = consent_statements(ParticipantFactory(study=study))
    assert statements.count("SELECT studies_assignmentcounter FOR UPDATE") == 1
    assert after_the_counter_lock(statements) == [
        "UPDATE studies_assignmentcounter",
        "UPDATE studies_participant",
        "INSERT studies_event",
    ]


def test_the_first_arrival_creates_its_counter_rows_before_locking_them():
    study = three_arm_study(block_size=3)
    statements = consent_statements(ParticipantFactory(study=study))
    assert "INSERT studies_assignmentcounter" not in after_the_counter_lock(statements)
    assert statements.index("INSERT studies_assignmentcounter") < statements.index(
        "SELECT studies_assignmentcounter FOR UPDATE"
    )


def test_without_study_wide_caps_no_study_row_is_locked_or_made():
    study = three_arm_study(block_size=3, stratify_by="document_type")
    study.conditions.update(cap_per_stratum=5)
    for _ in range(3):
        svc.participant_consent(participant_id=ParticipantFactory(study=study).pk)
    assert not AssignmentCounter.objects.filter(study=study, stratum=allocation.STUDY_ROW).exists()
    with CaptureQueriesContext(connection) as queries:
        svc.participant_consent(participant_id=ParticipantFactory(study=study).pk)
    locking = [q["sql"] for q in queries if q["sql"].rstrip().endswith("FOR UPDATE")]
    counters = [sql for sql in locking if "studies_assignmentcounter" in sql]
    # Exactly the document-type row and the arm strata of each type are named; nothing else.
    assert len(counters) == 1 and "LIKE" not in counters[0]


def test_study_wide_caps_count_every_stratum():
    study = three_arm_study(block_size=3, stratify_by="document_type")
    study.conditions.filter(key="base").update(cap=2)
    people = [ParticipantFactory(study=study) for _ in range(12)]
    for person in people:
        svc.participant_consent(participant_id=person.pk)
    base = Participant.objects.filter(study=study, condition__key="base")
    assert base.count() == 2
    assert (
        len({p.allocation["arm"]["stratum"] for p in Participant.objects.filter(study=study)}) > 1
    )


def test_a_released_slot_under_a_study_wide_cap_goes_to_the_next_arrival():
    study = three_arm_study(block_size=3, stratify_by="document_type")
    study.conditions.update(cap=1)
    people = [ParticipantFactory(study=study) for _ in range(3)]
    for person in people:
        svc.participant_consent(participant_id=person.pk)
    with pytest.raises(StudyActionError, match="full"):
        svc.participant_consent(participant_id=ParticipantFactory(study=study).pk)
    leaving = Participant.objects.get(pk=people[0].pk)
    outcomes.participant_end(participant_id=leaving.pk, outcome="returned")
    newcomer = ParticipantFactory(study=study)
    svc.participant_consent(participant_id=newcomer.pk)
    newcomer.refresh_from_db()
    assert newcomer.condition_id == leaving.condition_id
