"""Collaborative simulation: grow one conversation per task, scoring K candidates per turn by MR.

The chosen (highest MR) candidate continues the chat, and the next user message comes from one of
its own forward samples (paper §3), so the path stays consistent with how it was scored.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from training.pipeline.llm import Messages, Runtime
from training.pipeline.mr import CandidateScore, score_candidates
from training.pipeline.settings import RewardSettings, Roles, SamplingSettings
from training.pipeline.simulator import policy_reply, simulate_user
from training.pipeline.tasks import Task


@dataclass
class CollectedConversation:
    """A task's chosen path and, per turn, every candidate with its MR record."""

    task_id: str
    kind: str
    messages: Messages = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)
    # "terminated", "max_turns", "no_scored_candidate", "policy_failed", "user_failed"
    ended: str = "max_turns"

    def record(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "kind": self.kind,
            "messages": self.messages,
            "turns": self.turns,
            "ended": self.ended,
        }


async def sample_candidates(
    rt: Runtime, roles: Roles, history: Messages, n: int, temperature: float
) -> list[str]:
    """Up to n policy replies to history (a failed or empty one is left out)."""
    replies = await asyncio.gather(
        *(policy_reply(rt, roles.policy, history, temperature) for _ in range(n)),
        return_exceptions=True,
    )
    return [r[0] for r in replies if not isinstance(r, BaseException) and r[0]]


def _next_user_message(best: CandidateScore) -> tuple[str | None, bool]:
    """The first successful forward sample's user message after the chosen candidate, and whether
    it ended (a failed rollout's future is not the user's)."""
    for rollout in (r for r in best.rollouts if not r.failed):
        if rollout.terminated and not rollout.future:
            return None, True
        if rollout.future and rollout.future[0]["role"] == "user":
            return rollout.future[0]["content"], False
    return None, False


async def collect_conversation(
    rt: Runtime, roles: Roles, task: Task, sampling: SamplingSettings, reward: RewardSettings
) -> CollectedConversation:
    """Simulate one task's conversation up to max_turns, recording every scored candidate."""
    out = CollectedConversation(task.id, task.kind)
    first = await simulate_user(rt, roles.user, task, [], retries=sampling.user_retries)
    if first.terminated:
        out.ended = "user_failed" if first.failed else "terminated"
        return out
    out.messages.append({"role": "user", "content": first.text})
    for turn_index in range(sampling.max_turns):
        candidates = await sample_candidates(
            rt, roles, out.messages, sampling.candidates, sampling.candidate_temperature
        )
        if not candidates:
            out.ended = "policy_failed"
            break
        scores = await score_candidates(rt, roles, task, out.messages, candidates, sampling, reward)
        out.turns.append(
            {"history": list(out.messages), "candidates": [s.record(reward) for s in scores]}
        )
        scored = [s for s in scores if s.mr is not None]
        if not scored:
            out.ended = "no_scored_candidate"
            break
        best = max(scored, key=lambda s: s.mr)  # type: ignore[arg-type,return-value]
        out.messages.append({"role": "assistant", "content": best.candidate})
        if turn_index + 1 == sampling.max_turns:
            break
        text, ended = _next_user_message(best)
        if text is None and not ended:
            turn = await simulate_user(
                rt, roles.user, task, out.messages, retries=sampling.user_retries
            )
            if turn.failed:
                out.ended = "user_failed"
                break
            text, ended = (None, True) if turn.terminated else (turn.text, False)
        if ended or text is None:
            out.ended = "terminated"
            break
        out.messages.append({"role": "user", "content": text})
    return out
