"""Ending a participation other than by completing: screened out, returned, timed out, abandoned
(declining consent is its own step: participants.consent.participant_decline).

Each ending keeps every row the participant produced, records the outcome (which selects the
completion code they are shown) and frees their allocation slot where the design reuses slots.
Exclusion is separate: it marks a participant as not counting in analyses, with a reason, and
never deletes anything.
"""

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from studies.models import Participant, Study
from studies.services import assignment
from studies.services.errors import StudyActionError
from studies.services.events import event_record

P = Participant.Status
Out = Participant.Outcome
IN_PROGRESS = frozenset({P.ENTERED, P.CONSENTED, P.BRIEFED, P.CHATTING, P.RATING_DUE, P.FINAL})
ENDINGS = {
    Out.SCREENED_OUT: P.EXCLUDED,
    Out.RETURNED: P.RETURNED,
    Out.TIMED_OUT: P.TIMED_OUT,
    Out.ABANDONED: P.ABANDONED,
}


def participant_end(
    *, participant_id: int, outcome: str, reason: str = "", by: str = ""
) -> Participant:
    """End an unfinished participation with `outcome`; refuses completed or already-ended ones."""
    if outcome not in ENDINGS:
        raise ValueError(f"{outcome!r} is not an ending outcome")
    with transaction.atomic():
        participant = (
            Participant.objects.select_for_update(of=("self",))
            .select_related("study")
            .get(pk=participant_id)
        )
        if participant.status not in IN_PROGRESS:
            raise StudyActionError(
                "already_ended",
                _("This participation has already ended (%(status)s).")
                % {"status": participant.status},
            )
        now = timezone.now()
        participant.status = ENDINGS[Out(outcome)]
        participant.outcome = outcome
        participant.ended_at = now
        fields = ["status", "outcome", "ended_at"]
        if outcome == Out.SCREENED_OUT:
            participant.excluded_at = now
            participant.exclusion_reason = reason or "screened out"
            fields += ["excluded_at", "exclusion_reason"]
        participant.save(update_fields=fields)
        freed = assignment.release_slot(participant, reason=outcome)
        event_record(
            study_id=participant.study_id,
            participant_id=participant.pk,
            kind=f"study.participant.{outcome}",
            payload={"reason": reason, "by": by, "slot_freed": freed},
        )
    return participant


def participant_exclude(*, participant_id: int, reason: str, by: str = "") -> Participant:
    """Mark a participant as excluded from analyses, with the reason; idempotent on the reason."""
    reason = reason.strip()
    if not reason:
        raise StudyActionError("no_reason", _("An exclusion needs a reason."))
    with transaction.atomic():
        participant = Participant.objects.select_for_update().get(pk=participant_id)
        if participant.excluded_at is not None:
            return participant
        participant.excluded_at = timezone.now()
        participant.exclusion_reason = reason
        participant.save(update_fields=["excluded_at", "exclusion_reason"])
        freed = False
        if participant.status in IN_PROGRESS:
            participant.status = P.EXCLUDED
            participant.ended_at = participant.excluded_at
            participant.save(update_fields=["status", "ended_at"])
            freed = assignment.release_slot(participant, reason="excluded")
        event_record(
            study_id=participant.study_id,
            participant_id=participant.pk,
            kind="study.participant.excluded",
            payload={"reason": reason, "by": by, "slot_freed": freed},
        )
    return participant


def outcome_code(participant: Participant) -> str | None:
    """The completion code this participant is shown for their outcome (None: no code)."""
    study: Study = participant.study
    outcome = participant.outcome
    if not outcome and participant.status == P.COMPLETED:  # completed before outcomes existed
        outcome = Out.COMPLETED
    return {
        Out.COMPLETED: study.completion_code,
        Out.SCREENED_OUT: study.screened_out_code,
        Out.FAILED_ATTENTION: study.attention_failed_code,
        Out.TIMED_OUT: study.timed_out_code,
        Out.DECLINED: study.declined_code,
    }.get(outcome)
