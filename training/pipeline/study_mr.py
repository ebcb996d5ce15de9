"""Multiturn-aware Reward of real participants' replies: the paper's forward sampling, with the
participant standing in for the hidden goal.

For each finished assistant reply of a study chat, the real chat up to that turn's user message is
the history and the real reply the one candidate; `mr.score_candidates` forward-samples its future
with the user simulator seeded from the participant (`reply_task`) and scores every rollout. A
reply that cannot be scored gets a row with its reason, never an MR of 0.

    manage.py score_study <slug> --out DIR   (training/services/study_rewards.py reads the study)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from training.pipeline.llm import Messages, Runtime
from training.pipeline.mr import score_candidates
from training.pipeline.settings import ROLES, RewardSettings, Roles, SamplingSettings, as_record
from training.pipeline.simulator import PROMPT_VERSION
from training.pipeline.tasks import Task

COLUMNS = (
    "participant_id",
    "arm",
    "turn_index",
    "message_id",
    "mr",
    "task",
    "penalty",
    "interactivity",
    "error",
    "rollouts_attempted",
    "rollouts_succeeded",
    "rollouts_failed",
)
NO_FINAL_DOCUMENT = "no final document to compare with"
# The simulator writes like the person whose messages it continues, not like a stock persona.
PARTICIPANT_PERSONA = (
    "the person whose own messages appear in the chat so far: keep their tone, length and habits"
)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ParticipantRecord:
    """One participant's study data as MR scoring needs it.

    chat: user messages and finished replies in order, each {role, content, turn_index,
    message_id}; a reply continued after the token limit is one entry (the parts joined) under
    the first part's message id, as the export's messages table numbers it.
    """

    participant_id: str
    arm: str
    document_type: str
    topic: str
    brief: str
    intent: list[tuple[str, str]]
    chat: list[dict[str, Any]]
    final_document: str

    def replies(self) -> list[dict[str, Any]]:
        """The finished assistant replies, in turn order."""
        return [m for m in self.chat if m["role"] == "assistant"]


def reply_task(record: ParticipantRecord, turn: int) -> Task:
    """The task the user simulator holds when it continues the chat after the reply of `turn`.

    Follows the paper: a document task, its description one line ("a blog post about ..."), a
    goal only the simulated user sees, and the task metric (BLEU) against a reference.
    Departs from it where real users differ from simulated ones: a real participant has no
    target document, so the reference is the document they submitted at the end (the closest
    thing to their goal, and the only one the metric can compare with). The hidden goal is what
    the participant showed of their intent: the brief they were given, their answers to the
    topic questions before the chat, and what they went on to ask for in their own later
    messages (after `turn`). The final document never enters the goal: a simulator holding it
    would write it into the chat and the metric would score the simulator, not the reply.
    """
    kind = record.document_type.replace("_", " ").lower()
    description = f"a {kind} about {record.topic}"
    later = [
        m["content"]
        for m in record.chat
        if m["role"] == "user" and m["turn_index"] > turn and m["content"].strip()
    ]
    parts = [f"You want {description}."]
    if record.brief.strip():
        parts.append(f"The brief you were given:\n{record.brief.strip()}")
    if record.intent:
        answers = "\n".join(f"- {q.strip()} {a.strip()}" for q, a in record.intent)
        parts.append(f"What you said you wanted before the chat:\n{answers}")
    if later:
        asks = "\n".join(f"- {text.strip()}" for text in later)
        parts.append(
            "What you go on to ask the assistant for, in this order (ask in your own words "
            f"when the chat gets there):\n{asks}"
        )
    else:
        parts.append("You have nothing more to ask for: the document is nearly where you want it.")
    return Task(
        id=f"{record.participant_id}/turn-{turn}",
        kind="document",
        split="heldout",
        description=description,
        goal="\n\n".join(parts),
        reference=record.final_document,
        metadata={
            "participant_id": record.participant_id,
            "turn": str(turn),
            "arm": record.arm,
            "persona": PARTICIPANT_PERSONA,
        },
    )


def reply_history(record: ParticipantRecord, reply: dict[str, Any]) -> Messages:
    """The real chat before `reply`: it ends with the participant's message of the same turn."""
    before = record.chat[: record.chat.index(reply)]
    return [{"role": m["role"], "content": m["content"]} for m in before]


def _row(record: ParticipantRecord, reply: dict[str, Any], **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(
        participant_id=record.participant_id,
        arm=record.arm,
        turn_index=reply["turn_index"],
        message_id=reply["message_id"],
        error="",
    )
    row.update(values)
    return row


async def score_reply(
    rt: Runtime,
    roles: Roles,
    record: ParticipantRecord,
    reply: dict[str, Any],
    sampling: SamplingSettings,
    reward: RewardSettings,
) -> dict[str, Any]:
    """One reply's row: its MR and terms, or why it has none."""
    if not record.final_document.strip():
        return _row(record, reply, error=NO_FINAL_DOCUMENT, **_counts(0, 0, 0))
    history = reply_history(record, reply)
    if not history or history[-1]["role"] != "user":
        return _row(record, reply, error="the reply does not follow a message of the participant")
    task = reply_task(record, reply["turn_index"])
    try:
        [score] = await score_candidates(
            rt, roles, task, history, [reply["content"]], sampling, reward
        )
    except Exception as exc:  # one reply's crash is its own row, never the others' abort
        return _row(record, reply, error=f"{type(exc).__name__}: {exc}")
    counts = _counts(score.counts["attempted"], score.counts["succeeded"], score.counts["failed"])
    if score.mr is None:
        return _row(record, reply, error=score.unranked or "not scored", **counts)
    terms = {name: score.means[name] for name in ("task", "penalty", "interactivity")}
    return _row(record, reply, mr=score.mr, **terms, **counts)


def _counts(attempted: int, succeeded: int, failed: int) -> dict[str, int]:
    return {
        "rollouts_attempted": attempted,
        "rollouts_succeeded": succeeded,
        "rollouts_failed": failed,
    }


async def score_participant(
    rt: Runtime,
    roles: Roles,
    record: ParticipantRecord,
    sampling: SamplingSettings,
    reward: RewardSettings,
    on_progress: Callable[[], None] | None = None,
    max_replies: int | None = None,
) -> list[dict[str, Any]]:
    """One row per finished reply of the participant (the first `max_replies` when given), in
    turn order; on_progress after each."""

    async def one(reply: dict[str, Any]) -> dict[str, Any]:
        row = await score_reply(rt, roles, record, reply, sampling, reward)
        if on_progress is not None:
            on_progress()
        return row

    return list(await asyncio.gather(*(one(r) for r in record.replies()[:max_replies])))


@dataclass
class _Tally:
    total: int
    report: Progress | None
    done: int = 0

    def tick(self) -> None:
        self.done += 1
        if self.report is not None:
            self.report(self.done, self.total)


async def score_records(
    roles: Roles,
    records: list[ParticipantRecord],
    sampling: SamplingSettings,
    reward: RewardSettings,
    *,
    concurrency: int = 4,
    on_progress: Progress | None = None,
    max_replies: int | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows for every participant (at most `concurrency` at once) and the settings record;
    `max_replies`: only each participant's first replies (a cheap first look at a study)."""
    rt = Runtime(sampling.max_in_flight)
    gate = asyncio.Semaphore(concurrency)
    tally = _Tally(sum(len(r.replies()[:max_replies]) for r in records), on_progress)

    async def one(record: ParticipantRecord) -> list[dict[str, Any]]:
        async with gate:
            return await score_participant(
                rt, roles, record, sampling, reward, tally.tick, max_replies=max_replies
            )

    per_participant = await asyncio.gather(*(one(r) for r in records))
    rows = [row for rows in per_participant for row in rows]
    record = settings_record(roles, sampling, reward) | {
        "concurrency": concurrency,
        "max_replies_per_participant": max_replies,
        "calls": rt.stats.calls,
        "failed_calls": rt.stats.failures,
    }
    return rows, record


def settings_record(
    roles: Roles, sampling: SamplingSettings, reward: RewardSettings
) -> dict[str, Any]:
    """Sampling and reward settings with each role's model, base URL and generation params."""
    described: dict[str, Any] = {}
    for name in ROLES:
        role = getattr(roles, name)
        described[name] = {
            "model": role.endpoint.model,
            "base_url": role.endpoint.base_url,
            "params": role.params,
            "json_mode": role.json_mode,
            "system_prompt": role.system_prompt,
        }
    return as_record(sampling, reward) | {
        "roles": described,
        "token_lambda_used": reward.penalty_lambda("document"),
        "user_simulator_prompt": PROMPT_VERSION,
        "persona": PARTICIPANT_PERSONA,
        "goal": "brief + intent answers + the participant's later messages",
        "reference": "the participant's submitted final document",
    }
