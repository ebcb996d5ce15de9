"""Step 2, the brief: choose a topic (a Task of the assigned document type), answer the intent
questions, and go on to the comprehension check or straight to the chat."""

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from studies.models import Participant, Task
from studies.services.activity import activity_apply
from studies.services.errors import StudyActionError
from studies.services.events import event_record
from studies.services.participants.steps import MAX_ANSWER_CHARS, P, locked
from studies.services.text import normalise_newlines
from studies.services.versions import frozen_study


def participant_choose_topic(*, participant_id: int, task_id: int) -> Participant:
    """Set the topic (a Task of the participant's assigned document type)."""
    with transaction.atomic():
        participant = locked(participant_id, expected={P.CONSENTED})
        if participant.task_id is not None:
            raise StudyActionError("topic_chosen", _("You have already chosen a topic."))
        task = Task.objects.filter(
            pk=task_id, study_id=participant.study_id, document_type=participant.document_type
        ).first()
        if task is None:
            raise StudyActionError("bad_topic", _("Please choose one of the listed topics."))
        _take_topic(participant, task, only_topic=False)
    return participant


def participant_take_only_topic(*, participant_id: int) -> Participant:
    """Give the participant their document type's topic when it is the only one: no choice."""
    with transaction.atomic():
        participant = locked(participant_id, expected={P.CONSENTED})
        if participant.task_id is not None:
            return participant
        tasks = list(
            Task.objects.filter(
                study_id=participant.study_id, document_type=participant.document_type
            )[:2]
        )
        if len(tasks) == 1:
            _take_topic(participant, tasks[0], only_topic=True)
    return participant


def _take_topic(participant: Participant, task: Task, *, only_topic: bool) -> None:
    participant.task = task
    fields = activity_apply(participant, signal="page", now=timezone.now())
    participant.save(update_fields=["task", *fields])
    event_record(
        study_id=participant.study_id,
        participant_id=participant.pk,
        kind="study.participant.topic_chosen",
        payload={"task_id": task.pk, "only_topic": only_topic},
    )


def participant_submit_intent(*, participant_id: int, answers: list[str]) -> Participant:
    """Store the answers to the task's intent questions and open the chat."""
    now = timezone.now()
    with transaction.atomic():
        participant = locked(participant_id, expected={P.CONSENTED})
        if participant.task is None:
            raise StudyActionError("no_topic", _("Please choose a topic first."))
        questions = participant.task.intent_questions
        cleaned = [normalise_newlines(a).strip() for a in answers]
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
