"""Public release export: the conversations of participants who agreed to public sharing, in the
chat layout the training datasets use, with a list of likely personal data to review and a card.

Released are completed, non-excluded participants whose `consent_sharing` is True (never
previews; pilots only when asked). Each gets a fresh id (`r-0001`, ...) numbered in an order
fixed by a keyed hash, so neither the platform's public id nor the recruiting id nor the
export's pseudonym can be matched to it. No timestamps, platform ids or model settings go out.
Free text is scanned (`studies.services.pii`) and every hit is listed in pii_review.csv; nothing
is removed automatically: a person reviews the list before anything is published.
"""

import csv
import hashlib
import hmac
import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Prefetch, QuerySet

from studies.models import Message, Participant, Study
from studies.services import pii
from studies.services.exports import ExportError, check_out_dir, move_into_place
from studies.services.turns import join_reply_parts

REVIEW_COLUMNS = [
    "release_id",
    "location",
    "entity_type",
    "score",
    "start",
    "end",
    "text",
    "context",
]
CONSENT_EXCERPT = 600
# The tick box's wording on the consent page (studies/templates/studies/consent.html).
SHARING_QUESTION = (
    "My conversation may be shared, without my recruiting id, in a public research dataset."
)
CARD = """---
pretty_name: "{title}: conversations"
configs:
- config_name: default
  data_files:
  - split: train
    path: conversations.jsonl
task_categories:
- text-generation
---

# {title}: conversations

Conversations in which study participants wrote a document together with an AI assistant, on
this platform (study `{slug}`, a CollabLLM user study). Each participant was assigned one arm
(assistant configuration) and one writing task, chatted with the assistant, then submitted their
final document and a short survey.

**Not yet reviewed: read "Personal data" below before publishing.**

## Contents

{total} conversations.

| arm | conversations |
|---|---|
{arms}

## Consent

Only participants who ticked, at consent, the optional box "{sharing}" (unticked unless they
ticked it). Only those who completed the study and were not excluded; pilot participants
{pilots}; researchers' previews never.

## What was removed

Recruiting ids, the platform's participant and message ids, every timestamp, model names,
endpoints and generation settings, system prompts, token counts and the event log. Each
conversation has a fresh id (`r-0001`, ...) numbered in an order fixed by a keyed hash, which
cannot be matched to the study's other exports without the platform's key.

## Personal data (review before release)

All free text (user and assistant messages, final documents, intent answers, survey feedback)
was scanned with Presidio analyzer {presidio}, pattern recognisers only (no language model):
{entity_types}. {flagged} spans were flagged ({by_type}), listed in `pii_review.csv`
({review_columns}; `location` names the field, `start`/`end` index its text). Nothing was
removed automatically: a person must review every flagged span and edit or drop it before
anything is published. Patterns
do not find names, places, employers, health details and other personal data told in words, so
the text needs a human read as well. `pii_review.csv` repeats the flagged text: do not publish it.

## Format

`conversations.jsonl`, one JSON object per line:

- `id`: the release id; `arm`: the assistant configuration; `task_type`, `topic`: the task.
- `messages`: `[{{"role": "user" | "assistant", "content": ...}}, ...]`, the chat layout of the
  platform's training data (no system message): complete turns only, roles alternating, a reply
  cut at the token limit joined with its continuations.
- `final_document`: the document the participant submitted.
- `intent`: `[{{"question", "answer"}}]`, what the participant said they wanted before chatting.
- `feedback`: the survey's free-text `strengths` and `weaknesses` of the assistant.
- `ratings`: `document_quality` and `overall_interaction` (1-10), and `after_turn`: the rating
  given after the numbered turn.

## Consent text (excerpt)

> {excerpt}

Generated {date}.
"""


class ReleaseError(ExportError):
    """The release cannot be made (the study never asked for sharing consent, or bad out_dir)."""


@dataclass(frozen=True)
class ReleaseResult:
    path: Path
    per_arm: dict[str, int]
    flagged: int
    files: list[Path]

    @property
    def conversations(self) -> int:
        return sum(self.per_arm.values())


def released(study: Study, *, include_pilot: bool = False) -> QuerySet[Participant]:
    """Participants who may be released: completed, kept, and agreed to public sharing."""
    people = Participant.objects.filter(
        study=study,
        is_preview=False,
        status=Participant.Status.COMPLETED,
        excluded_at__isnull=True,
        consent_sharing=True,
    )
    return people if include_pilot else people.filter(is_pilot=False)


def release_ids(study: Study, participants: Iterable[Participant]) -> dict[int, str]:
    """Participant pk -> `r-0001`, ...: numbered in the order of a keyed hash of the public id."""
    key = settings.EXPORT_PSEUDONYM_KEY.encode()

    def rank(p: Participant) -> str:
        message = f"release:{study.slug}:{p.public_id}".encode()
        return hmac.new(key, message, hashlib.sha256).hexdigest()

    ordered = sorted(participants, key=rank)
    return {p.pk: f"r-{n:04d}" for n, p in enumerate(ordered, start=1)}


def chat_messages(messages: Iterable[Message]) -> list[dict[str, str]]:
    """Complete turns as alternating user/assistant messages, a reply's continuations joined.

    `messages` are one participant's, in id order. A turn whose reply never completed is left
    out with its user message, so roles always alternate and the last message is the assistant's.
    """
    user: dict[int, str] = {}
    parts: dict[int, list[str]] = {}
    for m in messages:
        if m.role == Message.Role.USER:
            user.setdefault(m.turn_index, m.content)
        elif m.status == Message.Status.COMPLETE:
            parts.setdefault(m.turn_index, []).append(m.content)
    chat = []
    for turn in sorted(set(user) & set(parts)):
        chat.append({"role": "user", "content": user[turn]})
        chat.append({"role": "assistant", "content": join_reply_parts(parts[turn])})
    return chat


def _record(participant: Participant, release_id: str) -> dict[str, Any]:
    survey = getattr(participant, "final_survey", None)
    assert participant.condition is not None and participant.task is not None
    return {
        "id": release_id,
        "arm": participant.condition.key,
        "task_type": participant.document_type,
        "topic": participant.task.topic,
        "messages": chat_messages(participant.messages.all()),
        "final_document": survey.document_text if survey else None,
        "intent": [
            {"question": a.question, "answer": a.answer} for a in participant.intent_answers.all()
        ],
        "feedback": {"strengths": survey.strengths, "weaknesses": survey.weaknesses}
        if survey
        else None,
        "ratings": {
            "document_quality": survey.document_quality if survey else None,
            "overall_interaction": survey.overall_interaction if survey else None,
            "after_turn": {str(r.after_turn): r.score for r in participant.ratings.all()},
        },
    }


def free_text(record: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(location, text) for every free-text field of a released record."""
    for i, message in enumerate(record["messages"]):
        yield f"messages[{i}].{message['role']}", message["content"]
    if record["final_document"]:
        yield "final_document", record["final_document"]
    for i, answer in enumerate(record["intent"]):
        yield f"intent[{i}].answer", answer["answer"]
    for field, text in (record["feedback"] or {}).items():
        yield f"feedback.{field}", text


def _flags(record: dict[str, Any]) -> Iterator[list[Any]]:
    for location, text in free_text(record):
        for s in pii.scan(text):
            yield [record["id"], location, s.entity_type, f"{s.score:.2f}", s.start, s.end,
                   s.text, s.context]  # fmt: skip


def _records(study: Study, include_pilot: bool) -> list[dict[str, Any]]:
    people = list(
        released(study, include_pilot=include_pilot)
        .select_related("condition", "task", "final_survey")
        .prefetch_related(
            Prefetch("messages", queryset=Message.objects.order_by("id")),
            "intent_answers",
            "ratings",
        )
    )
    ids = release_ids(study, people)
    return sorted((_record(p, ids[p.pk]) for p in people), key=lambda r: r["id"])


def release_export(
    study: Study, out_dir: Path, *, include_pilot: bool = False, force: bool = False
) -> ReleaseResult:
    """Write conversations.jsonl, pii_review.csv and README.md (the dataset card) to out_dir."""
    if not study.asks_sharing_consent:
        raise ReleaseError(
            f"Study {study.slug!r} never asked participants for consent to public sharing, so "
            "nobody may be released (turn on 'asks sharing consent' for future participants)."
        )
    out_dir = Path(out_dir).absolute()
    check_out_dir(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    records = _records(study, include_pilot)
    names = ["conversations.jsonl", "pii_review.csv", "README.md"]
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        with (tmp / names[0]).open("w", encoding="utf-8") as out:
            for record in records:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        flagged: Counter[str] = Counter()
        with (tmp / names[1]).open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(REVIEW_COLUMNS)
            for record in records:
                for row in _flags(record):
                    writer.writerow(row)
                    flagged[row[2]] += 1
        per_arm = dict(sorted(Counter(r["arm"] for r in records).items()))
        card = dataset_card(study, per_arm, flagged, include_pilot=include_pilot)
        (tmp / names[2]).write_text(card, encoding="utf-8")
        move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = [out_dir / name for name in names]
    return ReleaseResult(out_dir, per_arm, sum(flagged.values()), files)


def dataset_card(
    study: Study, per_arm: dict[str, int], flagged: Counter[str], *, include_pilot: bool
) -> str:
    """A Hugging Face dataset card: YAML header, then contents, consent, removals, scan, format."""
    from importlib.metadata import version

    arms = "\n".join(f"| {arm} | {n} |" for arm, n in per_arm.items()) or "| (none) | 0 |"
    by_type = ", ".join(f"{t} {n}" for t, n in sorted(flagged.items())) or "none"
    excerpt = " ".join(study.consent_text.split())[:CONSENT_EXCERPT]
    return CARD.format(
        title=study.title,
        slug=study.slug,
        total=sum(per_arm.values()),
        arms=arms,
        pilots="included" if include_pilot else "left out",
        sharing=SHARING_QUESTION,
        presidio=version("presidio-analyzer"),
        entity_types=", ".join(pii.entity_types()),
        flagged=sum(flagged.values()),
        by_type=by_type,
        review_columns=", ".join(REVIEW_COLUMNS),
        excerpt=excerpt + ("..." if len(study.consent_text) > len(excerpt) else ""),
        date=datetime.now(UTC).date().isoformat(),
    )
