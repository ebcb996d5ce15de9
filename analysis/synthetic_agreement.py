"""Synthetic reward-and-rating studies with a known link between the multiturn-aware reward (MR)
and the ratings, for checking that analysis.agreement recovers what was put in.

Each reply's terms are a participant level plus reply noise, and MR = task - penalty +
interactivity. The rating at a checkpoint is

    intercept + u_participant + true_slope * (mean MR of the scored replies up to it) + noise

with u ~ N(0, participant_sd) and noise ~ N(0, noise_sd), so the mixed model
`score ~ mr + (1 | participant)` has slope `true_slope` and ICC participant_sd^2 /
(participant_sd^2 + noise_sd^2). The final ratings follow the same rule with the mean MR over all
the participant's scored replies. With discrete=True scores are rounded and clipped to 1-10 (which
bends the link a little); the continuous default keeps it exact.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

TERM_LEVEL_SD = {"task": 0.3, "penalty": 0.1, "interactivity": 0.2}  # between participants
TERM_MEAN = {"task": 0.6, "penalty": 0.2, "interactivity": 0.5}
REPLY_SD = 0.2  # per reply, around the participant's level
FAILURE_ERROR = "scoring failed: timeout"


@dataclass
class SyntheticRewards:
    reply_rewards: pd.DataFrame
    turn_ratings: pd.DataFrame
    participants: pd.DataFrame
    true_slope: float
    icc: float  # participant_sd^2 / (participant_sd^2 + noise_sd^2)


def _replies(
    rng: np.random.Generator, ids: np.ndarray, arm: np.ndarray, turns: int, failure_rate: float
) -> pd.DataFrame:
    n = ids.size
    owner = np.repeat(np.arange(n), turns)
    terms = {
        name: (TERM_MEAN[name] + rng.normal(0, TERM_LEVEL_SD[name], n))[owner]
        + rng.normal(0, REPLY_SD, owner.size)
        for name in TERM_MEAN
    }
    mr = terms["task"] - terms["penalty"] + terms["interactivity"]
    failed = rng.random(owner.size) < failure_rate
    frame = pd.DataFrame(
        {
            "participant_id": ids[owner],
            "arm": arm[owner],
            "turn_index": np.tile(np.arange(1, turns + 1), n),
            "mr": mr,
            **terms,
            "error": np.where(failed, FAILURE_ERROR, ""),
        }
    )
    frame.loc[failed, ["mr", *TERM_MEAN]] = np.nan
    return frame


def _mean_mr_up_to(replies: pd.DataFrame, ids: np.ndarray, turn: int) -> np.ndarray:
    before = replies.loc[replies["turn_index"] <= turn]
    return before.groupby("participant_id")["mr"].mean().reindex(ids).to_numpy(dtype=float)


def _scores(latent: np.ndarray, discrete: bool) -> np.ndarray:
    return np.clip(np.rint(latent), 1, 10) if discrete else latent


def synthetic_rewards(
    n_participants: int,
    true_slope: float,
    seed: int,
    *,
    arms: Sequence[str] = ("base", "collabllm"),
    checkpoints: Sequence[int] = (3, 6, 9),
    turns: int = 9,
    intercept: float = 5.0,
    participant_sd: float = 1.0,
    noise_sd: float = 1.0,
    failure_rate: float = 0.0,
    discrete: bool = False,
) -> SyntheticRewards:
    """reply_rewards, turn_ratings and participants whose ratings follow MR with `true_slope`."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"p{i:05d}" for i in range(n_participants)], dtype=object)
    arm = np.array(arms, dtype=object)[np.arange(n_participants) % len(arms)]
    replies = _replies(rng, ids, arm, turns, failure_rate)
    u = rng.normal(0, participant_sd, n_participants)
    ratings = []
    for turn in checkpoints:
        # A participant without a scored reply yet is rated on their own level alone.
        mr = np.nan_to_num(_mean_mr_up_to(replies, ids, turn))
        noise = rng.normal(0, noise_sd, n_participants)
        score = _scores(intercept + u + true_slope * mr + noise, discrete)
        ratings.append(
            pd.DataFrame({"participant_id": ids, "arm": arm, "after_turn": turn, "score": score})
        )
    overall_mr = np.nan_to_num(_mean_mr_up_to(replies, ids, turns))
    final = {
        name: _scores(
            intercept + u + true_slope * overall_mr + rng.normal(0, noise_sd, n_participants),
            discrete,
        )
        for name in ("overall_interaction", "document_quality")
    }
    participants = pd.DataFrame({"participant_id": ids, "arm": arm, **final})
    turn_ratings = pd.concat(ratings, ignore_index=True)
    icc = participant_sd**2 / (participant_sd**2 + noise_sd**2)
    return SyntheticRewards(replies, turn_ratings, participants, true_slope, icc)
