"""Where a participant is: their status mapped to the one page they may be on, and the row lock
every step function takes before it changes anything."""

from django.utils.translation import gettext as _

from studies.models import Participant
from studies.services.errors import StudyActionError

P = Participant.Status

STEP_BY_STATUS = {
    P.ENTERED: "consent",
    P.CONSENTED: "brief",
    P.BRIEFED: "check",
    P.CHATTING: "chat",
    P.RATING_DUE: "chat",
    P.FINAL: "final",
    P.COMPLETED: "done",
}

MAX_ANSWER_CHARS = 2000

MAX_DOCUMENT_CHARS = 50_000

# Ended by housekeeping after finishing the chat: they may still hand in the final survey.
LATE_FINAL = frozenset({P.ABANDONED, P.TIMED_OUT})


def participant_step(participant: Participant) -> str:
    """The one page this participant may be on now ('closed' when they may not continue)."""
    if _may_submit_late(participant):
        return "final"
    return STEP_BY_STATUS.get(participant.status, "closed")


def _may_submit_late(participant: Participant) -> bool:
    return (
        participant.status in LATE_FINAL
        and participant.chat_finished_at is not None
        and participant.completed_at is None
    )


def locked(
    participant_id: int, *, expected: set[str] | None = None, step: str | None = None
) -> Participant:
    """The participant under a row lock, if in one of the `expected` statuses or at `step`."""
    participant = (
        Participant.objects.select_for_update(of=("self",))
        .select_related("study", "task", "version")
        .get(pk=participant_id)
    )
    allowed = participant.status in expected if expected is not None else True
    if not allowed or (step is not None and participant_step(participant) != step):
        raise StudyActionError(
            "wrong_step",
            _("That step is not available now; you have been taken to your current step."),
        )
    return participant
