"""Step 5, the final survey: the document, the ratings and the attention checks; completes the
participant."""

from dataclasses import asdict, dataclass, replace

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from studies.models import FinalSurvey, Participant
from studies.services import documents  # the module: documents imports this package first
from studies.services.activity import activity_apply
from studies.services.errors import StudyActionError
from studies.services.events import event_record
from studies.services.participants.check import answers_wrong
from studies.services.participants.steps import MAX_DOCUMENT_CHARS, P, locked
from studies.services.text import normalise_newlines
from studies.services.versions import frozen_study


@dataclass(frozen=True)
class FinalAnswers:
    document_text: str
    document_quality: int
    overall_interaction: int
    strengths: str
    weaknesses: str
    attention: tuple[int | None, ...] = ()


def participant_submit_final(
    *, participant_id: int, answers: FinalAnswers, document_version: int | None = None
) -> Participant:
    """Store the final document and survey, score attention checks and complete the participant.

    Failing the attention checks still completes the participant (their data are kept); the
    outcome selects the code they are shown, and exclusion rules can mark them later.
    `document_version` is the version the page's document was edited from: when another tab has
    saved a newer one since, DocumentStale is raised (the refused text kept in an Event).
    """
    answers = replace(
        answers,
        document_text=normalise_newlines(answers.document_text),
        strengths=normalise_newlines(answers.strengths),
        weaknesses=normalise_newlines(answers.weaknesses),
    )
    if len(answers.document_text) > MAX_DOCUMENT_CHARS:
        raise StudyActionError(
            "too_long",
            _("The document is limited to %(max_document_chars)s characters.")
            % {"max_document_chars": MAX_DOCUMENT_CHARS},
        )
    text = normalise_newlines(answers.document_text)
    with transaction.atomic():
        participant = locked(participant_id, step="final")  # late submissions included
        stale = documents.document_final_stale(
            participant=participant, text=text, base_version=document_version
        )
        if stale is None:
            _complete(participant, answers, text)
    if stale is not None:
        raise stale  # after the commit: the event keeps the refused text
    return participant


def _complete(participant: Participant, answers: FinalAnswers, text: str) -> None:
    now = timezone.now()
    late = participant.status if participant.status != P.FINAL else None
    frozen = frozen_study(participant)
    checks = frozen.attention_checks
    wrong = answers_wrong(checks, list(answers.attention))
    survey = asdict(answers)
    attention = survey.pop("attention")
    survey["document_text"] = text
    documents.document_save_final(participant=participant, text=text)
    FinalSurvey.objects.create(
        participant=participant,
        **survey,
        extra_answers={"attention": list(attention)} if checks else {},
    )
    threshold = min(frozen.attention_fail_threshold, len(checks))
    failed = bool(checks) and len(wrong) >= max(1, threshold)
    participant.attention_failures = len(wrong)
    participant.outcome = (
        Participant.Outcome.FAILED_ATTENTION if failed else Participant.Outcome.COMPLETED
    )
    participant.status = P.COMPLETED
    participant.completed_at = now
    fields = activity_apply(participant, signal="page", now=now)
    participant.save(
        update_fields=["status", "completed_at", "outcome", "attention_failures", *fields]
    )
    event_record(
        study_id=participant.study_id,
        participant_id=participant.pk,
        kind="study.participant.completed",
        # A late survey (after housekeeping ended them) is kept; their slot may be reused.
        payload={"outcome": participant.outcome, "attention_wrong": wrong, "late": late},
    )
