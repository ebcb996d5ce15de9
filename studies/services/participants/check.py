"""Step 3, the comprehension check: two attempts, then the participant is screened out."""

from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from studies.models import Participant
from studies.services import outcomes
from studies.services.activity import activity_apply
from studies.services.errors import StudyActionError
from studies.services.events import event_record
from studies.services.participants.steps import P, locked
from studies.services.versions import frozen_study

COMPREHENSION_ATTEMPTS = 2


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    attempts_left: int
    wrong: list[int]

    @property
    def screened_out(self) -> bool:
        return not self.passed and self.attempts_left == 0


def answers_wrong(questions: list[dict], answers: list[int | None]) -> list[int]:
    """Indexes of the questions whose answer is missing or not the keyed choice."""
    padded = [*answers, *[None] * (len(questions) - len(answers))]
    return [i for i, q in enumerate(questions) if padded[i] != q.get("answer")]


def participant_check_comprehension(
    *, participant_id: int, answers: list[int | None], attempt: int | None = None
) -> CheckResult:
    """Score the comprehension check: pass opens the chat; a second failure screens them out.

    Failures are committed (not rolled back by an error), so a reload cannot buy extra attempts.
    """
    now = timezone.now()
    with transaction.atomic():
        participant = locked(participant_id, expected={P.BRIEFED})
        if attempt is not None and attempt != participant.comprehension_failures:
            raise StudyActionError(
                "stale_attempt", _("That attempt was already checked; here is where you are now.")
            )
        wrong = answers_wrong(frozen_study(participant).comprehension_questions, answers)
        if not wrong:
            participant.status = P.CHATTING
            participant.chat_started_at = now
            fields = ["status", "chat_started_at"]
        else:
            participant.comprehension_failures += 1
            fields = ["comprehension_failures"]
        participant.save(update_fields=fields + activity_apply(participant, signal="page", now=now))
        attempts_left = max(0, COMPREHENSION_ATTEMPTS - participant.comprehension_failures)
        event_record(
            study_id=participant.study_id,
            participant_id=participant.pk,
            kind="study.check.passed" if not wrong else "study.check.failed",
            payload={
                "attempt": participant.comprehension_failures + (0 if wrong else 1),
                "wrong": wrong,
            },
        )
        if wrong and attempts_left == 0:
            outcomes.participant_end(
                participant_id=participant.pk,
                outcome=Participant.Outcome.SCREENED_OUT,
                reason="failed the comprehension check twice",
            )
    return CheckResult(passed=not wrong, attempts_left=attempts_left, wrong=wrong)
