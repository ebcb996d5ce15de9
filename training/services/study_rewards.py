"""Multiturn-aware Reward of a study's real replies: the study's rows read into plain records for
`training.pipeline.study_mr`, the rows written beside the settings that produced them.

participant_id is the participant's public UUID, the id every table of the study export carries,
so reply_rewards.csv joins the export's participants, messages (message_id) and turn_ratings.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.db.models import Prefetch, QuerySet
from django.utils import timezone

from studies.models import IntentAnswer, Message, Participant, Study
from studies.services.turns import join_reply_parts
from training.pipeline.progress import run_reporting
from training.pipeline.settings import RewardSettings, Roles, SamplingSettings
from training.pipeline.study_mr import COLUMNS, ParticipantRecord, score_records

CSV_NAME, SETTINGS_NAME = "reply_rewards.csv", "reply_rewards_settings.json"


def _entry(m: Message) -> dict[str, Any]:
    return {"role": m.role, "content": m.content, "turn_index": m.turn_index, "message_id": m.pk}


def study_chat(messages: list[Message]) -> list[dict[str, Any]]:
    """User messages and finished replies in order, each reply joined with its continuations."""
    chat: list[dict[str, Any]] = []
    replies: dict[int, dict[str, Any]] = {}  # any part's id -> its reply's entry
    parts: dict[int, list[str]] = {}
    for m in messages:
        if m.role == Message.Role.USER:
            chat.append(_entry(m))
        elif m.status == Message.Status.COMPLETE:
            root = replies.get(m.continuation_of_id) if m.continuation_of_id else None
            if root is None and m.continuation_of_id is not None:
                continue  # continues a reply that did not finish: not part of the chat
            if root is None:
                root = _entry(m)
                chat.append(root)
            replies[m.pk] = root
            parts.setdefault(root["message_id"], []).append(m.content)
    for entry in chat:
        if entry["role"] == "assistant":
            entry["content"] = join_reply_parts(parts[entry["message_id"]])
    return chat


def completed_participants(study: Study, *, include_pilot: bool = False) -> QuerySet[Participant]:
    """The study's completed participants: never previews, pilots only when asked."""
    people = Participant.objects.real() if not include_pilot else Participant.objects.all()
    return people.filter(study=study, is_preview=False, status=Participant.Status.COMPLETED)


def study_records(
    study: Study, *, include_pilot: bool = False, training_consent: bool = False
) -> list[ParticipantRecord]:
    """Completed participants (never previews; pilots only when asked) as plain records.

    Participants excluded after completing are kept, as the export keeps them (its `excluded`
    column): the analysis decides, and a reward computed once need not be computed again.
    With training_consent, only those who agreed to their data being used for training.
    """
    people = completed_participants(study, include_pilot=include_pilot)
    if training_consent:
        people = people.filter(consent_training=True)
    people = (
        people.select_related("condition", "task", "final_survey")
        .prefetch_related(
            Prefetch("messages", queryset=Message.objects.order_by("id")),
            Prefetch("intent_answers", queryset=IntentAnswer.objects.order_by("question_index")),
        )
        .order_by("id")
    )
    records = []
    for p in people:
        survey = getattr(p, "final_survey", None)
        records.append(
            ParticipantRecord(
                participant_id=str(p.public_id),
                arm=p.condition.key if p.condition else "",
                document_type=p.task.get_document_type_display() if p.task else p.document_type,
                topic=p.task.topic if p.task else "",
                brief=p.task.brief if p.task else "",
                intent=[(a.question, a.answer) for a in p.intent_answers.all()],
                chat=study_chat(list(p.messages.all())),
                final_document=survey.document_text if survey else "",
            )
        )
    return records


def score_study(
    study: Study,
    *,
    roles: Roles,
    sampling: SamplingSettings,
    reward: RewardSettings,
    out_dir: Path,
    include_pilot: bool = False,
    progress: Callable[[int, int], None] | None = None,
    concurrency: int = 4,
    max_replies: int | None = None,
) -> Path:
    """Score every finished reply of the study's completed participants (each one's first
    `max_replies` when given); return the CSV's path."""
    records = study_records(study, include_pilot=include_pilot)
    if not any(r.replies() for r in records):
        raise ValueError(f"study {study.slug!r} has no completed participant with a reply to score")
    rows, record = run_reporting(
        lambda report: score_records(
            roles,
            records,
            sampling,
            reward,
            concurrency=concurrency,
            on_progress=report,
            max_replies=max_replies,
        ),
        progress,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CSV_NAME
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)  # None is written as an empty cell: missing, as in the export
    record |= {
        "study": study.slug,
        "include_pilot": include_pilot,
        "participants": len(records),
        "replies": len(rows),
        "scored": sum(1 for r in rows if r["mr"] is not None),
        "participant_id": "the participant's public id, as in the study export",
        "scored_at": timezone.now().isoformat(),
    }
    (out_dir / SETTINGS_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path
