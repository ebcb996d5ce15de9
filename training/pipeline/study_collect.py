"""Training data from a study's real conversations instead of simulated ones.

At each assistant turn of a participant's chat, the history is the real chat up to that turn's
user message; the candidates are the reply the participant saw and `candidates - 1` replies
sampled from the policy; all are scored by MR with the participant as the hidden goal
(`study_mr.reply_task`). The chat goes on with the participant's real next message, never a
simulated one: their chat is the record. Each conversation is stored as simulated collection
stores it, so `stages.build_datasets` makes the SFT and DPO rows from it; each candidate record
carries "source": "participant" (the real reply) or "policy" (sampled here).

    run_dir/source.json                          the study and who was left out, for the cards
    run_dir/conversations/participant-<id>.json  one per eligible participant

training/services/study_collect.py reads the study (only participants who agreed to training use)
and calls `collect_records`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from training.pipeline.collect import CollectedConversation, sample_candidates
from training.pipeline.llm import CallStats, Runtime
from training.pipeline.mr import score_candidates
from training.pipeline.progress import Progress
from training.pipeline.settings import RewardSettings, Roles, SamplingSettings, as_record
from training.pipeline.stages import SOURCE_NAME, collect_each, write_atomically
from training.pipeline.study_mr import ParticipantRecord, reply_history, reply_task

PARTICIPANT, POLICY = "participant", "policy"


def conversation_id(record: ParticipantRecord) -> str:
    return f"participant-{record.participant_id}"


async def collect_participant(
    rt: Runtime,
    roles: Roles,
    record: ParticipantRecord,
    sampling: SamplingSettings,
    reward: RewardSettings,
) -> CollectedConversation:
    """The participant's chat with, per assistant turn (at most max_turns), every scored candidate.

    `messages` is the real chat up to the last turn taken, so the SFT rows are what participants
    and the arm's model wrote; the DPO rows pair the best and worst MR at each turn.
    """
    out = CollectedConversation(conversation_id(record), "document", ended="chat_ended")
    if not record.final_document.strip():
        out.ended = "no_final_document"  # no reference for the task metric: nothing to score
        return out
    replies = record.replies()
    if len(replies) > sampling.max_turns:
        replies, out.ended = replies[: sampling.max_turns], "max_turns"
    for reply in replies:
        history = reply_history(record, reply)
        if not history or history[-1]["role"] != "user":
            continue
        sampled = await sample_candidates(
            rt, roles, history, sampling.candidates - 1, sampling.candidate_temperature
        )
        task = reply_task(record, reply["turn_index"])
        texts = [reply["content"], *sampled]
        scores = await score_candidates(rt, roles, task, history, texts, sampling, reward)
        out.turns.append(
            {
                "history": history,
                "turn_index": reply["turn_index"],
                "message_id": reply["message_id"],
                "candidates": [
                    s.record(reward) | {"source": PARTICIPANT if i == 0 else POLICY}
                    for i, s in enumerate(scores)
                ],
            }
        )
        out.messages = [*history, {"role": "assistant", "content": reply["content"]}]
    return out


def collect_records(
    run_dir: Path,
    records: Sequence[ParticipantRecord],
    roles: Roles,
    sampling: SamplingSettings,
    reward: RewardSettings,
    *,
    source: Mapping[str, Any],
    parallel: int = 4,
    on_progress: Progress | None = None,
) -> CallStats:
    """One conversation per participant not yet on disk, and source.json; report (done, total)."""
    write_atomically(run_dir / SOURCE_NAME, source)

    async def one(rt: Runtime, record: ParticipantRecord) -> dict[str, Any]:
        conv = await collect_participant(rt, roles, record, sampling, reward)
        return conv.record() | {
            "settings": as_record(sampling, reward),
            "participant_id": record.participant_id,
            "arm": record.arm,
        }

    return collect_each(
        run_dir, records, conversation_id, one, sampling, parallel=parallel, on_progress=on_progress
    )
