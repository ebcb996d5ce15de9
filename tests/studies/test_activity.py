from datetime import timedelta

import pytest
from django.utils import timezone

from studies.models import Event
from studies.services.activity import activity_apply, activity_record
from tests.factories import ParticipantFactory

T0 = timezone.now()


def at(seconds):
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def participant(db):
    return ParticipantFactory(last_active_at=T0, is_visible=True)


def test_gaps_between_active_signals_count_as_active_time(participant):
    activity_apply(participant, signal="active", now=at(15))
    activity_apply(participant, signal="active", now=at(30))
    assert participant.active_seconds == pytest.approx(30)


def test_a_gap_longer_than_the_idle_threshold_is_dropped(participant, settings):
    settings.IDLE_THRESHOLD_SECONDS = 60
    activity_apply(participant, signal="active", now=at(15))
    activity_apply(participant, signal="active", now=at(15 + 600))
    assert participant.active_seconds == pytest.approx(15)


def test_time_after_hiding_or_idling_is_not_active(participant):
    activity_apply(participant, signal="hidden", now=at(10))
    activity_apply(participant, signal="visible", now=at(40))
    activity_apply(participant, signal="idle", now=at(50))
    activity_apply(participant, signal="active", now=at(65))
    assert participant.active_seconds == pytest.approx(10 + 10)


def test_a_recorded_signal_is_saved_and_logged(participant):
    activity_record(participant_id=participant.pk, signal="active")
    participant.refresh_from_db()
    assert participant.last_active_at > T0
    assert Event.objects.filter(participant=participant, kind="study.presence.active").exists()


def test_an_unknown_signal_is_refused(participant):
    with pytest.raises(ValueError):
        activity_record(participant_id=participant.pk, signal="teleport")
    assert not Event.objects.filter(participant=participant).exists()
