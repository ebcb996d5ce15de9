"""The admin's lists read as people expect: counts split by kind, times as minutes and seconds."""

import re

import pytest
from django.urls import reverse

from studies.models import Participant
from tests.factories import ParticipantFactory

pytestmark = pytest.mark.django_db


def _cells(page: str, column: str) -> list[str]:
    """The text of one list_display column's cells (Django marks them field-<name>)."""
    cells = re.findall(rf'class="field-{column}[^"]*">(.*?)</t[dh]>', page, re.S)
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in cells]


def _completed(**kwargs) -> Participant:
    task = kwargs["study"].tasks.first()
    return ParticipantFactory(
        status=Participant.Status.COMPLETED,
        task=task,
        document_type=task.document_type,
        condition=kwargs["study"].conditions.first(),
        **kwargs,
    )


def test_the_study_list_counts_real_pilot_and_preview_participants_apart(researcher, study):
    ParticipantFactory.create_batch(2, study=study)
    _completed(study=study)
    ParticipantFactory.create_batch(3, study=study, is_pilot=True)
    _completed(study=study, is_pilot=True)
    ParticipantFactory.create_batch(2, study=study, is_preview=True)

    page = researcher.get(reverse("admin:studies_study_changelist")).content.decode()

    counts = [
        _cells(page, name) for name in ("n_participants", "n_completed", "n_pilot", "n_preview")
    ]
    assert counts == [["3"], ["1"], ["4"], ["2"]]


def test_the_participant_list_shows_active_time_in_minutes_and_seconds(researcher, study):
    ParticipantFactory(study=study, active_seconds=132.66186600000003)

    page = researcher.get(reverse("admin:studies_participant_changelist")).content.decode()

    assert _cells(page, "active_time") == ["2 min 13 s"]
    assert "132.66" not in page
