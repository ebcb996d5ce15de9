"""The participant lifecycle: enter, consent (with assignment), brief, finish chat, final survey.

Every function locks the participant row, checks the step it belongs to, changes it and writes an
Event in one transaction. A replayed or out-of-order request raises StudyActionError and changes
nothing.
"""

import uuid
from dataclasses import asdict, dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from studies.models import FinalSurvey, Message, Participant, Study, Task
from studies.services import assignment, outcomes, reentry
from studies.services.activity import activity_apply
from studies.services.errors import StudyActionError
from studies.services.events import event_record
from studies.services.turns import time_is_up
from studies.services.versions import frozen_study, version_latest

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


@dataclass(frozen=True)
class Entry:
    participant: Participant
    created: bool
    # The plain resume code of a participant just created (only its hash is stored).
    resume_code: str | None = None


def participant_enter(
    *,
    study: Study,
    external_id: str | None,
    source: str,
    params: dict[str, str],
    kind: str | None = None,
) -> Entry:
    """Return the participant for this external id, creating them on first entry.

    `kind` is "preview" or "pilot" for a researcher's signed link (allowed before the study is
    live); such participants never share the real allocation sequences. An existing participant
    comes back with created=False and nothing changed: whether this browser may continue as them
    is the caller's question (studies.services.reentry), and so is recording their new attempt.
    """
    now = timezone.now()
    if external_id:
        existing = Participant.objects.filter(study=study, external_id=external_id).first()
        if existing is not None:
            return Entry(existing, created=False)
    if study.status == Study.Status.CLOSED or (kind is None and study.status != Study.Status.LIVE):
        raise StudyActionError("not_live", _("This study is not accepting participants right now."))
    if external_id and kind is None and _took_part_in_linked(study, external_id):
        raise StudyActionError(
            "repeat",
            _(
                "Our records show you have already taken part in a related study, so you cannot "
                "take part in this one. Please return the task; thank you for your interest."
            ),
        )
    ext = external_id or f"{kind or 'anon'}-{uuid.uuid4().hex}"
    version = version_latest(study)
    code = reentry.resume_code_new()
    try:
        with transaction.atomic():
            participant = Participant(
                study=study,
                external_id=ext,
                recruiting_source=source,
                recruiting_params=params,
                config_version=version.number,
                version=version,
                attempts=[reentry.attempt_new(params, now)],
                is_pilot=kind == "pilot",
                is_preview=kind == "preview",
                last_active_at=now,
            )
            participant.resume_code_hash = reentry.resume_code_hash(participant, code)
            participant.save(force_insert=True)
            event_record(
                study_id=study.pk,
                participant_id=participant.pk,
                kind="study.participant.entered",
                payload={"source": source, "version": version.number, "access": kind or "public"},
            )
    except IntegrityError:
        # Two tabs arrived with the same id at once: the other request created the row. This one
        # is a re-entry like any other; the caller binds it only if it proves it is them.
        return Entry(Participant.objects.get(study=study, external_id=ext), created=False)
    return Entry(participant, created=True, resume_code=code)


def _took_part_in_linked(study: Study, external_id: str) -> bool:
    return Participant.objects.filter(
        study__in=study.linked_studies.all(), external_id=external_id, is_preview=False
    ).exists()


def _locked(
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


def participant_consent(*, participant_id: int) -> Participant:
    """Record consent and assign the arm and the document type (permuted blocks, locked).

    A study's arrivals queue on its counter rows, so everything is read and computed before
    `assign_participant` takes them: after it, only the participant's UPDATE and the event's
    INSERT run before COMMIT (tests/studies/test_consent_locking.py pins this).
    """
    now = timezone.now()
    with transaction.atomic():
        participant = _locked(participant_id, expected={P.ENTERED})
        study = participant.study
        # The version in force at consent (arms included) is the one the participant keeps.
        entered_version = participant.config_version
        participant.version = version_latest(study)
        participant.config_version = participant.version.number
        plan = assignment.assignment_plan(participant)
        fields = ["condition", "document_type", "allocation", "status", "consented_at"]
        fields += ["version", "config_version"]
        fields += activity_apply(participant, signal="page", now=now)
        assigned = assignment.assign_participant(participant, plan)
        participant.condition = plan.conditions[assigned.condition_key]
        participant.document_type = assigned.document_type
        participant.allocation = assigned.record
        participant.status = P.CONSENTED
        participant.consented_at = now
        participant.save(update_fields=fields)
        event_record(
            study_id=study.pk,
            participant_id=participant.pk,
            kind="study.participant.consented",
            payload={
                "allocation": participant.allocation,
                "version": participant.config_version,
                "entered_version": entered_version,
            },
        )
    return participant


def participant_choose_topic(*, participant_id: int, task_id: int) -> Participant:
    """Set the topic (a Task of the participant's assigned document type)."""
    with transaction.atomic():
        participant = _locked(participant_id, expected={P.CONSENTED})
        if participant.task_id is not None:
            raise StudyActionError("topic_chosen", _("You have already chosen a topic."))
        task = Task.objects.filter(
            pk=task_id, study_id=participant.study_id, document_type=participant.document_type
        ).first()
        if task is None:
            raise StudyActionError("bad_topic", _("Please choose one of the listed topics."))
        participant.task = task
        fields = activity_apply(participant, signal="page", now=timezone.now())
        participant.save(update_fields=["task", *fields])
        event_record(
            study_id=participant.study_id,
            participant_id=participant.pk,
            kind="study.participant.topic_chosen",
            payload={"task_id": task.pk},
        )
    return participant


def participant_submit_intent(*, participant_id: int, answers: list[str]) -> Participant:
    """Store the answers to the task's intent questions and open the chat."""
    now = timezone.now()
    with transaction.atomic():
        participant = _locked(participant_id, expected={P.CONSENTED})
        if participant.task is None:
            raise StudyActionError("no_topic", _("Please choose a topic first."))
        questions = participant.task.intent_questions
        cleaned = [a.strip() for a in answers]
        if len(cleaned) != len(questions) or not all(cleaned):
            raise StudyActionError("incomplete", _("Please answer every question."))
        if any(len(a) > MAX_ANSWER_CHARS for a in cleaned):
            raise StudyActionError(
                "too_long",
                _("Answers are limited to %(max_answer_chars)s characters.")
                % {"max_answer_chars": MAX_ANSWER_CHARS},
            )
        participant.intent_answers.bulk_create(
            participant.intent_answers.model(
                participant=participant, question_index=i, question=q, answer=a
            )
            for i, (q, a) in enumerate(zip(questions, cleaned, strict=True))
        )
        participant.briefed_at = now
        fields = ["status", "briefed_at", *activity_apply(participant, signal="page", now=now)]
        if frozen_study(participant).comprehension_questions:
            participant.status = P.BRIEFED
        else:
            participant.status = P.CHATTING
            participant.chat_started_at = now
            fields.append("chat_started_at")
        participant.save(update_fields=fields)
        event_record(
            study_id=participant.study_id,
            participant_id=participant.pk,
            kind="study.participant.briefed",
        )
    return participant


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
        participant = _locked(participant_id, expected={P.BRIEFED})
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


def completed_turns(participant_id: int) -> int:
    """Turns whose assistant reply completed."""
    return Message.objects.filter(
        participant_id=participant_id, role=Message.Role.ASSISTANT, status=Message.Status.COMPLETE
    ).count()


def participant_finish_chat(*, participant_id: int) -> Participant:
    """Leave the chat for the final survey; only after the minimum number of turns."""
    with transaction.atomic():
        participant = _locked(participant_id, expected={P.CHATTING})
        done = completed_turns(participant.pk)
        time_up = time_is_up(participant)
        min_turns = frozen_study(participant).min_turns
        if done < min_turns and not time_up:
            raise StudyActionError(
                "too_few_turns",
                _("Please complete at least %(min_turns)s turns (you have %(done)s).")
                % {"min_turns": min_turns, "done": done},
            )
        if participant.messages.filter(status=Message.Status.STREAMING).exists():
            raise StudyActionError("busy", _("Please wait for the assistant's reply to finish."))
        participant.status = P.FINAL
        participant.chat_finished_at = timezone.now()
        fields = activity_apply(participant, signal="page", now=participant.chat_finished_at)
        participant.save(update_fields=["status", "chat_finished_at", *fields])
        event_record(
            study_id=participant.study_id,
            participant_id=participant.pk,
            kind="study.chat.finished",
            payload={"turns": done, "time_up": time_up},
        )
    return participant


@dataclass(frozen=True)
class FinalAnswers:
    document_text: str
    document_quality: int
    overall_interaction: int
    strengths: str
    weaknesses: str
    attention: tuple[int | None, ...] = ()


def participant_submit_final(*, participant_id: int, answers: FinalAnswers) -> Participant:
    """Store the final document and survey, score attention checks and complete the participant.

    Failing the attention checks still completes the participant (their data are kept); the
    outcome selects the code they are shown, and exclusion rules can mark them later.
    """
    if len(answers.document_text) > MAX_DOCUMENT_CHARS:
        raise StudyActionError(
            "too_long",
            _("The document is limited to %(max_document_chars)s characters.")
            % {"max_document_chars": MAX_DOCUMENT_CHARS},
        )
    now = timezone.now()
    with transaction.atomic():
        participant = _locked(participant_id, step="final")  # late submissions included
        late = participant.status if participant.status != P.FINAL else None
        frozen = frozen_study(participant)
        checks = frozen.attention_checks
        wrong = answers_wrong(checks, list(answers.attention))
        survey = asdict(answers)
        attention = survey.pop("attention")
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
    return participant


PROLIFIC_COMPLETION_URL = "https://app.prolific.com/submissions/complete?cc={code}"


def completion_redirect(participant: Participant) -> str | None:
    """The recruiting platform's completion URL for this participant's outcome, if there is one.

    Prolific studies get Prolific's own completion address unless the study sets another; the
    code is the one for the participant's outcome (completed, screened out, failed attention
    checks, timed out). Preview and pilot participants are never sent to a platform.
    """
    code = outcomes.outcome_code(participant)
    if code is None or participant.is_preview or participant.is_pilot:
        return None
    study = participant.study
    url = study.completion_redirect_url
    if not url and participant.recruiting_source == Study.Source.PROLIFIC:
        url = PROLIFIC_COMPLETION_URL
    return url.replace("{code}", code) if url else None
