"""Periodic housekeeping: time out and abandon unfinished participations, keeping all their data.

Candidates are chosen set-based (one query joining the study); each is then re-checked under its
row lock and ended in its own transaction through `participant_end`, which keeps every row, frees
the allocation slot where the design says so and writes the event. A participant who moved on
between the two steps (completed, ended elsewhere, active again) is skipped, so reruns are no-ops.
"""

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import DurationField, Exists, F, Func, OuterRef, QuerySet, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from studies.models import Message, Participant
from studies.services.errors import StudyActionError
from studies.services.outcomes import IN_PROGRESS, participant_end

log = logging.getLogger(__name__)
BY = "housekeeping"


class Minutes(Func):
    """An integer expression as a PostgreSQL interval of that many minutes."""

    template = "make_interval(mins => %(expressions)s)"
    output_field = DurationField()


# Someone whose page reported activity this recently is still working (every participant page
# sends a heartbeat): they are not timed out mid-sentence, and their answers are not refused.
ACTIVE_WINDOW = timedelta(minutes=5)


def _timed_out(now: datetime) -> QuerySet[Participant]:
    grace = settings.TIMEOUT_GRACE_MINUTES
    return (
        # The limit is for the chat: someone on the final survey is never timed out (if they go
        # quiet for long they are abandoned, and may still hand the survey in).
        Participant.objects.filter(
            status__in=IN_PROGRESS - {Participant.Status.FINAL},
            study__time_limit_minutes__isnull=False,
        )
        .annotate(started=Coalesce("chat_started_at", "consented_at"))
        .annotate(deadline=F("started") + Minutes(F("study__time_limit_minutes") + Value(grace)))
        .annotate(last_seen=Coalesce("last_active_at", "entered_at"))
        .filter(deadline__lt=now, last_seen__lt=now - ACTIVE_WINDOW)
    )


def _stale(now: datetime) -> QuerySet[Participant]:
    # A reply checkpointed within the stale-stream window means a live process is streaming to
    # this participant: they are reading, whatever their last client signal says.
    streaming = Message.objects.filter(
        participant=OuterRef("pk"),
        status=Message.Status.STREAMING,
        updated_at__gte=now - timedelta(seconds=settings.CHAT_STALE_STREAM_SECONDS),
    )
    return (
        Participant.objects.filter(status__in=IN_PROGRESS, study__abandon_after_minutes__gt=0)
        .annotate(last_seen=Coalesce("last_active_at", "entered_at"))
        .annotate(deadline=F("last_seen") + Minutes(F("study__abandon_after_minutes")))
        .filter(deadline__lt=now)
        .exclude(Exists(streaming))
        # Someone past their time limit gets the timed-out outcome (and code), not abandoned.
        .exclude(pk__in=_timed_out(now).values("pk"))
    )


def _end_each(
    candidates: Callable[[datetime], QuerySet[Participant]],
    *,
    now: datetime,
    outcome: str,
    reason: str,
) -> list[int]:
    ended = []
    for pk in list(candidates(now).values_list("pk", flat=True).order_by("pk")):
        try:
            with transaction.atomic():
                locked = candidates(now).filter(pk=pk).select_for_update(of=("self",))
                if not list(locked.values_list("pk", flat=True)):
                    continue
                participant_end(participant_id=pk, outcome=outcome, reason=reason, by=BY)
        except StudyActionError as exc:
            if exc.code != "already_ended":
                raise
            continue
        ended.append(pk)
    if ended:
        log.info("housekeeping: %s %d participant(s): %s", outcome, len(ended), ended)
    return ended


def participants_abandon_stale(now: datetime | None = None) -> list[int]:
    """Mark in-progress participants inactive past their study's abandon_after_minutes abandoned."""
    return _end_each(
        _stale,
        now=now or timezone.now(),
        outcome=Participant.Outcome.ABANDONED,
        reason="no activity for longer than the study's abandon_after_minutes",
    )


def participants_time_out(now: datetime | None = None) -> list[int]:
    """Time out in-progress participants past their study's time limit plus the grace minutes."""
    return _end_each(
        _timed_out,
        now=now or timezone.now(),
        outcome=Participant.Outcome.TIMED_OUT,
        reason="past the study's time limit",
    )
