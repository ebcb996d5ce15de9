"""Housekeeping: stale participations abandoned, overdue ones timed out, data kept, reruns idle."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from studies import tasks
from studies.models import Event, Message, Participant, TurnRating
from studies.services import assignment, housekeeping, turns
from tests.factories import ParticipantFactory
from tests.studies.conftest import advance_to_chat, complete_reply, new_key

pytestmark = pytest.mark.django_db
P = Participant.Status


def backdate(participant, *, idle_minutes=0, chat_minutes=0):
    """Move a participant's last activity and chat start into the past."""
    now = timezone.now()
    fields = {}
    if idle_minutes:
        fields |= {
            "last_active_at": now - timedelta(minutes=idle_minutes),
            "entered_at": now - timedelta(minutes=idle_minutes),
        }
    if chat_minutes:
        fields["chat_started_at"] = now - timedelta(minutes=chat_minutes)
    Participant.objects.filter(pk=participant.pk).update(**fields)


@pytest.fixture
def chatted(chatting):
    """A chatting participant with one finished turn and a rating."""
    reply = turns.turn_start(participant_id=chatting.pk, text="Help me", key=new_key())
    complete_reply(reply.assistant_message)
    TurnRating.objects.create(participant=chatting, after_turn=1, score=7)
    return chatting


def test_a_stale_participant_is_abandoned_and_keeps_their_data(chatted):
    backdate(chatted, idle_minutes=61)
    assert housekeeping.participants_abandon_stale() == [chatted.pk]
    chatted.refresh_from_db()
    assert (chatted.status, chatted.outcome) == (P.ABANDONED, "abandoned")
    assert chatted.ended_at is not None and chatted.condition is not None
    assert chatted.messages.count() == 2 and chatted.ratings.count() == 1
    assert chatted.allocation["arm"]["choice"] == chatted.condition.key


def test_a_participant_who_only_entered_is_abandoned_from_their_entry_time(study):
    entered = ParticipantFactory(study=study)
    backdate(entered, idle_minutes=61)
    Participant.objects.filter(pk=entered.pk).update(last_active_at=None)
    assert housekeeping.participants_abandon_stale() == [entered.pk]


def test_active_participants_are_untouched(chatted):
    backdate(chatted, idle_minutes=59)
    assert housekeeping.participants_abandon_stale() == []
    chatted.refresh_from_db()
    assert chatted.status == P.CHATTING


def test_the_study_setting_decides_how_long_is_stale(chatted):
    chatted.study.abandon_after_minutes = 10
    chatted.study.save()
    backdate(chatted, idle_minutes=11)
    assert housekeeping.participants_abandon_stale() == [chatted.pk]


def test_completed_participants_are_never_touched(study):
    done = ParticipantFactory(study=study)
    advance_to_chat(done)
    Participant.objects.filter(pk=done.pk).update(
        status=P.COMPLETED, outcome="completed", completed_at=timezone.now()
    )
    backdate(done, idle_minutes=600, chat_minutes=600)
    study.time_limit_minutes = 5
    study.save()
    assert housekeeping.participants_abandon_stale() == []
    assert housekeeping.participants_time_out() == []
    done.refresh_from_db()
    assert (done.status, done.ended_at) == (P.COMPLETED, None)


def test_someone_whose_reply_is_streaming_is_not_abandoned(chatting):
    turns.turn_start(participant_id=chatting.pk, text="Still there?", key=new_key())
    backdate(chatting, idle_minutes=61)
    assert housekeeping.participants_abandon_stale() == []
    stale = timezone.now() - timedelta(seconds=settings.CHAT_STALE_STREAM_SECONDS + 1)
    Message.objects.filter(participant=chatting, status="streaming").update(updated_at=stale)
    assert housekeeping.participants_abandon_stale() == [chatting.pk]


def test_ending_frees_the_slot_and_records_the_event(chatted, monkeypatch):
    released = []
    real = assignment.release_slot
    monkeypatch.setattr(
        assignment,
        "release_slot",
        lambda p, *, reason: released.append((p.pk, reason)) or real(p, reason=reason),
    )
    backdate(chatted, idle_minutes=61)
    housekeeping.participants_abandon_stale()
    assert released == [(chatted.pk, "abandoned")]
    event = Event.objects.get(participant=chatted, kind="study.participant.abandoned")
    assert "slot_freed" in event.payload and event.payload["by"] == "housekeeping"


def test_a_rerun_changes_nothing(chatted):
    backdate(chatted, idle_minutes=61)
    assert housekeeping.participants_abandon_stale() == [chatted.pk]
    assert housekeeping.participants_abandon_stale() == []
    assert Event.objects.filter(kind="study.participant.abandoned").count() == 1


def test_a_participant_past_the_time_limit_and_grace_is_timed_out(chatted):
    chatted.study.time_limit_minutes = 30
    chatted.study.save()
    backdate(chatted, idle_minutes=6, chat_minutes=30 + settings.TIMEOUT_GRACE_MINUTES + 1)
    assert housekeeping.participants_time_out() == [chatted.pk]
    chatted.refresh_from_db()
    assert (chatted.status, chatted.outcome) == (P.TIMED_OUT, "timed_out")
    assert chatted.messages.count() == 2
    assert housekeeping.participants_time_out() == []


def test_an_overdue_participant_still_active_is_not_timed_out(chatted):
    # Someone writing the final document past the limit keeps their page's heartbeat going.
    chatted.study.time_limit_minutes = 30
    chatted.study.save()
    backdate(chatted, idle_minutes=4, chat_minutes=30 + settings.TIMEOUT_GRACE_MINUTES + 1)
    assert housekeeping.participants_time_out() == []
    backdate(chatted, idle_minutes=6)
    assert housekeeping.participants_time_out() == [chatted.pk]


def test_the_page_heartbeat_keeps_a_participant_active(chatted):
    client = Client(enforce_csrf_checks=True)
    session = client.session
    session[f"participant:{chatted.study.slug}"] = chatted.pk
    session.save()
    alive = reverse("studies:alive", args=[chatted.study.slug])
    assert client.post(alive).status_code == 403  # no CSRF token
    assert client.get(alive).status_code == 405
    backdate(chatted, idle_minutes=61)
    client.get(reverse("studies:chat", args=[chatted.study.slug]))  # sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    assert client.post(alive, {"signal": "active"}, HTTP_X_CSRFTOKEN=token).status_code == 204
    assert housekeeping.participants_abandon_stale() == []
    assert chatted.events.filter(kind="study.presence.active", payload__page=True).exists()


def test_a_participant_within_the_grace_is_not_timed_out(chatted):
    chatted.study.time_limit_minutes = 30
    chatted.study.save()
    backdate(chatted, chat_minutes=30 + settings.TIMEOUT_GRACE_MINUTES - 1)
    assert housekeeping.participants_time_out() == []


def test_studies_without_a_time_limit_time_no_one_out(chatted):
    backdate(chatted, chat_minutes=10_000)
    assert housekeeping.participants_time_out() == []


def test_an_overdue_and_idle_participant_is_timed_out_not_abandoned(chatted):
    chatted.study.time_limit_minutes = 30
    chatted.study.save()
    backdate(chatted, idle_minutes=120, chat_minutes=120)
    assert housekeeping.participants_abandon_stale() == []
    assert housekeeping.participants_time_out() == [chatted.pk]


def test_a_participant_active_again_since_selection_is_skipped(chatted, monkeypatch):
    backdate(chatted, idle_minutes=61)
    original = housekeeping._stale
    calls = []

    def stale_then_active(now):
        calls.append(now)
        if len(calls) == 2:  # the re-check under the row lock: the participant came back
            Participant.objects.filter(pk=chatted.pk).update(last_active_at=timezone.now())
        return original(now)

    monkeypatch.setattr(housekeeping, "_stale", stale_then_active)
    assert housekeeping.participants_abandon_stale() == []
    chatted.refresh_from_db()
    assert chatted.status == P.CHATTING


def test_selecting_candidates_is_one_query_however_many_participants(
    study, django_assert_num_queries
):
    for _ in range(5):
        advance_to_chat(ParticipantFactory(study=study))
    with django_assert_num_queries(1):
        housekeeping.participants_abandon_stale()
    with django_assert_num_queries(1):
        housekeeping.participants_time_out()


def test_the_tasks_end_participants_and_return_how_many(chatted):
    backdate(chatted, idle_minutes=61)
    assert tasks.time_out_participants() == 0
    assert tasks.abandon_stale_participants() == 1
    assert tasks.reap_stale_replies() == 0


def test_beat_runs_every_housekeeping_task_each_minute():
    schedule = {e["task"]: e["schedule"] for e in settings.CELERY_BEAT_SCHEDULE.values()}
    for name in ["reap_stale_replies", "time_out_participants", "abandon_stale_participants"]:
        assert schedule[f"studies.tasks.{name}"] == 60.0
