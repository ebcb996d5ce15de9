"""Server-side wall and active time.

Active time adds the gap between two consecutive signals only when the participant was active at the
first one (page visible and interacting, or reading a streamed reply) and the gap is at most
IDLE_THRESHOLD_SECONDS; longer gaps count as idle and are dropped.
"""

from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from studies.models import Participant
from studies.services.events import event_record
from studies.services.versions import frozen_study

ACTIVE_SIGNALS = {"active", "visible", "page", "message", "connected"}
INACTIVE_SIGNALS = {"idle", "hidden", "disconnected"}
SIGNALS = ACTIVE_SIGNALS | INACTIVE_SIGNALS
CLIENT_SIGNALS = {"active", "idle", "visible", "hidden"}


def activity_apply(participant: Participant, *, signal: str, now: datetime) -> list[str]:
    """Fold one signal into the participant's active time; return the changed field names."""
    if participant.last_active_at is not None and participant.is_visible:
        gap = (now - participant.last_active_at).total_seconds()
        if 0 < gap <= settings.IDLE_THRESHOLD_SECONDS:
            participant.active_seconds += gap
    # last_active_at is the last sign of a person (housekeeping reads it): an "idle" or "hidden"
    # report closes the active stretch but is not itself activity. The gap after it is never
    # counted (is_visible is False), so active time is the same either way.
    if signal in ACTIVE_SIGNALS or participant.last_active_at is None:
        participant.last_active_at = now
    participant.is_visible = signal in ACTIVE_SIGNALS
    return ["active_seconds", "last_active_at", "is_visible"]


def activity_record(
    *, participant_id: int, signal: str, payload: dict | None = None
) -> Participant:
    """Record a client presence signal (heartbeat, visibility) as an event and in active time."""
    if signal not in SIGNALS:
        raise ValueError(f"unknown activity signal {signal!r}")
    now = timezone.now()
    with transaction.atomic():
        participant = Participant.objects.select_for_update(of=("self",)).get(pk=participant_id)
        fields = activity_apply(participant, signal=signal, now=now)
        participant.save(update_fields=fields)
        event_record(
            study_id=participant.study_id,
            participant_id=participant.pk,
            kind=f"study.presence.{signal}" if signal in CLIENT_SIGNALS else f"study.chat.{signal}",
            payload=payload or {},
        )
    return participant


MAX_PASTE_CHARS = 1_000_000


def paste_record(*, participant_id: int, chars: int) -> bool:
    """Record that the participant pasted text into the chat box (when the study detects pastes)."""
    if not isinstance(chars, int) or isinstance(chars, bool) or not 0 <= chars <= MAX_PASTE_CHARS:
        raise ValueError("paste length must be a non-negative integer")
    participant = Participant.objects.select_related("study", "version").get(pk=participant_id)
    if not frozen_study(participant).detect_paste:
        return False
    event_record(
        study_id=participant.study_id,
        participant_id=participant.pk,
        kind="study.chat.paste",
        payload={"chars": chars},
    )
    return True
