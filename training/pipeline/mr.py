"""Multiturn-aware Reward: forward-sample each candidate's future S times, score every rollout.

All rollouts of all candidates of a step are started at once; Runtime's gate bounds the model
calls actually in flight, so the server sees a full batch instead of one request at a time.
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass, field
from typing import Any

from models_serving.client import ModelCallError
from training.pipeline.llm import Messages, Runtime
from training.pipeline.rewards import COMPONENTS, Components, score_conversation
from training.pipeline.settings import RewardSettings, Roles, SamplingSettings
from training.pipeline.simulator import UserTurn, policy_reply, simulate_user
from training.pipeline.tasks import Task


@dataclass
class Rollout:
    """One forward sample: the future after the candidate, and its reward terms."""

    future: Messages
    terminated: bool
    user_turns: list[UserTurn] = field(default_factory=list)
    components: Components = field(default_factory=Components)
    error: str | None = None  # the rollout itself broke off (the policy's server failed)

    def record(self, settings: RewardSettings) -> dict[str, Any]:
        c = self.components
        return {
            "future": self.future,
            "terminated": self.terminated,
            "error": self.error,
            "task": c.task,
            "penalty": c.penalty,
            "interactivity": c.interactivity,
            "tokens": c.tokens,
            "reward": c.reward(settings),
            "component_errors": c.errors,
            "user_fallbacks": [t.fallback for t in self.user_turns if t.fallback],
        }


@dataclass
class CandidateScore:
    """MR of one candidate: per-term means and spreads over its rollouts."""

    candidate: str
    rollouts: list[Rollout]
    mr: float | None
    means: dict[str, float | None]
    spreads: dict[str, float | None]

    def record(self, settings: RewardSettings) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "mr": self.mr,
            "means": self.means,
            "spreads": self.spreads,
            "rollouts": [r.record(settings) for r in self.rollouts],
        }


async def forward_sample(
    rt: Runtime, roles: Roles, task: Task, history: Messages, sampling: SamplingSettings
) -> Rollout:
    """Continue history (ending with the candidate) for up to w user+assistant turns."""
    conversation = list(history)
    rollout = Rollout(future=[], terminated=False)
    for _ in range(sampling.window):
        turn = await simulate_user(
            rt, roles.user, task, conversation, retries=sampling.user_retries
        )
        rollout.user_turns.append(turn)
        if turn.terminated:
            rollout.terminated = True
            break
        conversation.append({"role": "user", "content": turn.text})
        try:
            reply, _ = await policy_reply(rt, roles.policy, conversation)
        except ModelCallError as exc:
            rollout.error = str(exc)  # scored on what was sampled before the failure
            break
        conversation.append({"role": "assistant", "content": reply})
    rollout.future = conversation[len(history) :]
    return rollout


async def _scored_rollout(
    rt: Runtime,
    roles: Roles,
    task: Task,
    history: Messages,
    sampling: SamplingSettings,
    reward: RewardSettings,
) -> Rollout:
    rollout = await forward_sample(rt, roles, task, history, sampling)
    rollout.components = await score_conversation(rt, roles, task, history + rollout.future, reward)
    return rollout


def combine(candidate: str, rollouts: list[Rollout], reward: RewardSettings) -> CandidateScore:
    """MR from the rollouts' terms, by the available-case rule.

    Each term is averaged over the rollouts where it was computed; MR = weighted sum of those
    means. A term that failed in every rollout leaves MR None: that candidate is reported but is
    never chosen or rejected, so a broken judge cannot decide a preference pair.
    """
    means: dict[str, float | None] = {}
    spreads: dict[str, float | None] = {}
    for name in COMPONENTS:
        values = [v for r in rollouts if (v := getattr(r.components, name)) is not None]
        means[name] = statistics.fmean(values) if values else None
        spreads[name] = statistics.pstdev(values) if len(values) > 1 else None
    mr = None
    if all(means[name] is not None for name in COMPONENTS):
        mr = (
            reward.task_weight * means["task"]  # type: ignore[operator]
            - reward.token_weight * means["penalty"]  # type: ignore[operator]
            + reward.interactivity_weight * means["interactivity"]  # type: ignore[operator]
        )
    return CandidateScore(candidate, rollouts, mr, means, spreads)


async def score_candidates(
    rt: Runtime,
    roles: Roles,
    task: Task,
    history: Messages,
    candidates: list[str],
    sampling: SamplingSettings,
    reward: RewardSettings,
) -> list[CandidateScore]:
    """MR for every candidate reply to history (which ends with a user message)."""
    jobs = [
        _scored_rollout(
            rt, roles, task, [*history, {"role": "assistant", "content": c}], sampling, reward
        )
        for c in candidates
        for _ in range(sampling.samples)
    ]
    done = await asyncio.gather(*jobs)
    per = sampling.samples
    return [
        combine(c, list(done[i * per : (i + 1) * per]), reward) for i, c in enumerate(candidates)
    ]
