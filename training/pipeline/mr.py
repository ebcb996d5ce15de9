"""Multiturn-aware Reward: forward-sample each candidate's future S times, score every rollout.

All rollouts of all candidates of a step are started at once; Runtime's gate bounds the model
calls actually in flight, so the server sees a full batch instead of one request at a time.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from models_serving.client import ModelCallError
from training.pipeline.llm import Messages, Runtime
from training.pipeline.rewards import COMPONENTS, Components, score_conversation
from training.pipeline.settings import RewardSettings, Roles, SamplingSettings
from training.pipeline.simulator import UserTurn, policy_reply, simulate_user
from training.pipeline.tasks import Task

Failure = Literal["user_failed", "policy_failed"]


@dataclass
class Rollout:
    """One forward sample: the future after the candidate, and its reward terms."""

    future: Messages
    terminated: bool
    user_turns: list[UserTurn] = field(default_factory=list)
    components: Components = field(default_factory=Components)
    error: str | None = None  # why the rollout broke off (see failure)
    # A rollout cut short by a failing server is not a shorter future: scoring it would reward
    # the short, cheap chats that failures produce. It is counted and left out of MR.
    failure: Failure | None = None

    @property
    def failed(self) -> bool:
        return self.failure is not None

    def fail(self, failure: Failure, error: str) -> None:
        """Mark the rollout as broken off by a failure (not an ending)."""
        self.failure, self.error = failure, error

    def record(self, settings: RewardSettings) -> dict[str, Any]:
        c = self.components
        return {
            "future": self.future,
            "terminated": self.terminated,
            "failure": self.failure,
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
    """MR of one candidate: per-term means and spreads over its successful rollouts."""

    candidate: str
    rollouts: list[Rollout]
    mr: float | None
    means: dict[str, float | None]
    spreads: dict[str, float | None]
    counts: dict[str, Any] = field(default_factory=dict)  # see rollout_counts
    unranked: str | None = None  # why mr is None

    def record(self, settings: RewardSettings) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "mr": self.mr,
            "unranked": self.unranked,
            "rollout_counts": self.counts,
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
        if turn.failed:
            rollout.fail("user_failed", turn.error or "the user simulator failed")
            break
        if turn.terminated:
            rollout.terminated = True
            break
        conversation.append({"role": "user", "content": turn.text})
        try:
            reply, _ = await policy_reply(rt, roles.policy, conversation)
        except ModelCallError as exc:
            rollout.fail("policy_failed", str(exc))
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
    if not rollout.failed:  # a failed rollout is never scored, so no judge time is spent on it
        rollout.components = await score_conversation(
            rt, roles, task, history + rollout.future, reward
        )
    return rollout


def rollout_counts(rollouts: list[Rollout]) -> dict[str, Any]:
    """Rollouts attempted, succeeded and failed, with the failures by reason."""
    failures = Counter(r.failure for r in rollouts if r.failure is not None)
    return {
        "attempted": len(rollouts),
        "succeeded": len(rollouts) - sum(failures.values()),
        "failed": sum(failures.values()),
        "failures": dict(sorted(failures.items())),
    }


def combine(
    candidate: str, rollouts: list[Rollout], reward: RewardSettings, *, min_successful: int = 1
) -> CandidateScore:
    """MR from the successful rollouts' terms, by the available-case rule.

    Failed rollouts are counted and left out. Each term is averaged over the successful rollouts
    where it was computed; MR = weighted sum of those means. Fewer than min_successful successful
    rollouts, or a term that failed in every one, leaves MR None: that candidate is reported but
    is never chosen or rejected, so broken servers or a broken judge cannot decide a pair.
    """
    ok = [r for r in rollouts if not r.failed]
    means: dict[str, float | None] = {}
    spreads: dict[str, float | None] = {}
    for name in COMPONENTS:
        values = [v for r in ok if (v := getattr(r.components, name)) is not None]
        means[name] = statistics.fmean(values) if values else None
        spreads[name] = statistics.pstdev(values) if len(values) > 1 else None
    counts = rollout_counts(rollouts)
    mr, unranked = None, None
    missing = [name for name in COMPONENTS if means[name] is None]
    if len(ok) < min_successful:
        unranked = f"{len(ok)} of {len(rollouts)} rollouts succeeded; {min_successful} needed"
    elif missing:
        unranked = f"no rollout computed {', '.join(missing)}"
    else:
        mr = (
            reward.task_weight * means["task"]  # type: ignore[operator]
            - reward.token_weight * means["penalty"]  # type: ignore[operator]
            + reward.interactivity_weight * means["interactivity"]  # type: ignore[operator]
        )
    return CandidateScore(candidate, rollouts, mr, means, spreads, counts, unranked)


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
    per, least = sampling.samples, sampling.min_successful()
    return [
        combine(c, list(done[i * per : (i + 1) * per]), reward, min_successful=least)
        for i, c in enumerate(candidates)
    ]
