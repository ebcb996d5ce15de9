"""Synthetic studies with known effects, in the export's tables and types, for tests, benchmarks and
checking that the report recovers what was put in.

Scores are integers 1-10 made by rounding and clipping a normal latent score (arm level +
participant intercept + noise). The latent arm levels are solved so that the *expected integer
score* hits the requested means exactly, so `Truth` holds estimands of the generated data itself:
E[overall_interaction] of an arm is reference * (1 + satisfaction_change), E[wall_seconds] is
28 min * (1 + time_change) (lognormal), and rating_means / rating_slope are the exact expected
ratings per checkpoint and their least-squares slope per turn. With `messages`, the study also has
assistant replies, document versions and final documents built from them
(analysis.synthetic_documents), and `Truth.documents` holds each document measure's expected value
per arm.
"""

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps

from analysis import synthetic_documents
from analysis.schema import (
    DOCUMENT_VERSIONS,
    EVENTS,
    FINAL_SURVEYS,
    INTENT_ANSWERS,
    MESSAGES,
    PARTICIPANTS,
    TURN_RATINGS,
    Table,
    rating_column,
)

SATISFACTION_CHANGE = MappingProxyType({"proactive": 0.05, "collabllm": 0.176})
TIME_CHANGE = MappingProxyType({"proactive": 0.06, "collabllm": -0.104})
TRAJECTORY_SLOPE = MappingProxyType({"base": -0.15, "proactive": 0.1, "collabllm": 0.12})
QUALITY_MEAN = MappingProxyType({"base": 7.9, "proactive": 8.1, "collabllm": 8.5})
TASKS = ("blog_post", "creative_writing", "personal_statement")
EXCLUSION_REASONS = ("failed attention check", "duplicate participant", "off-task document")
PARTICIPANT_SD, OVERALL_SD, RATING_SD, QUALITY_SD, TIME_LOG_SD = 0.8, 1.3, 1.0, 1.2, 0.35
ACTIVE_SHARE = (16.0, 4.0)  # Beta(a, b) share of wall time that was active; mean 0.8
SYSTEM_TOKENS, TEMPLATE_TOKENS = 60, 5
START = np.datetime64("2026-01-05T09:00:00", "us")
PANDAS_DTYPES = {"string": "str", "json": "str", "int": "Int64", "float": "float64"}


@dataclass(frozen=True)
class Truth:
    reference: str
    arms: tuple[str, ...]
    overall_interaction: dict[str, float]
    document_quality: dict[str, float]
    wall_seconds: dict[str, float]
    active_seconds: dict[str, float]
    satisfaction_change: dict[str, float]
    time_change: dict[str, float]
    trajectory_slope: dict[str, float]
    rating_means: dict[tuple[str, int], float]
    rating_slope: dict[str, float]
    overall_latent: dict[str, float]
    overall_latent_sd: float
    # With messages: per measure of analysis.documents.MEASURES, its expected value per arm.
    documents: dict[str, dict[str, float]] = field(default_factory=dict)

    def overall_share_at_least(self, arm: str, threshold: float) -> float:
        """P(overall_interaction >= threshold) in an arm (the estimand of share_at_least)."""
        cut = np.ceil(threshold) - 0.5  # the rounded score reaches the threshold from here
        if cut <= 1 or cut > 10:
            return float(cut <= 1)
        return float(sps.norm.sf((cut - self.overall_latent[arm]) / self.overall_latent_sd))


class SyntheticStudy(dict[str, pd.DataFrame]):
    """The generated tables by name, with the values they were generated from as `.truth`."""

    def __init__(self, tables: Mapping[str, pd.DataFrame], truth: Truth) -> None:
        super().__init__(tables)
        self.truth = truth


def expected_score(latent_mean: float, sd: float) -> float:
    """E[clip(round(Y), 1, 10)] for Y ~ Normal(latent_mean, sd)."""
    cuts = np.arange(1, 10) + 0.5
    return float(1 + sps.norm.sf((cuts - latent_mean) / sd).sum())


def latent_for(expected: float, sd: float) -> float:
    """The latent mean whose rounded, clipped score has this expectation (1 < expected < 10)."""
    if not 1 < expected < 10:
        raise ValueError(f"an expected 1-10 score must lie strictly between 1 and 10: {expected}")
    return float(optimize.brentq(lambda mu: expected_score(mu, sd) - expected, -10, 25, xtol=1e-12))


def _truth(
    arms: Sequence[str], reference: str, base_satisfaction: float, base_seconds: float,
    satisfaction: Mapping[str, float], time: Mapping[str, float], slope: Mapping[str, float],
    quality: Mapping[str, float], checkpoints: Sequence[int], turns: int,
) -> tuple[Truth, dict[str, dict[str, float]]]:  # fmt: skip
    overall_sd = np.hypot(PARTICIPANT_SD, OVERALL_SD)
    rating_sd = np.hypot(PARTICIPANT_SD, RATING_SD)
    overall = {a: base_satisfaction * (1 + satisfaction.get(a, 0.0)) for a in arms}
    latent = {a: latent_for(overall[a], overall_sd) for a in arms}
    rating_means = {
        (a, k): expected_score(latent[a] + slope.get(a, 0.0) * (k - turns), rating_sd)
        for a in arms
        for k in checkpoints
    }
    ks = np.asarray(checkpoints, dtype=float)
    rating_slope = {
        a: float(np.polyfit(ks, [rating_means[(a, int(k))] for k in ks], 1)[0])
        if ks.size > 1
        else np.nan
        for a in arms
    }
    quality_mean = {a: quality.get(a, 8.0) for a in arms}
    quality_sd = np.hypot(PARTICIPANT_SD / 2, QUALITY_SD)
    latents = {
        "overall": latent,
        "quality": {a: latent_for(quality_mean[a], quality_sd) for a in arms},
    }
    wall = {a: base_seconds * (1 + time.get(a, 0.0)) for a in arms}
    share = ACTIVE_SHARE[0] / sum(ACTIVE_SHARE)
    truth = Truth(
        reference, tuple(arms), overall, quality_mean, wall,
        {a: wall[a] * share for a in arms},
        {a: overall[a] / overall[reference] - 1 for a in arms if a != reference},
        {a: wall[a] / wall[reference] - 1 for a in arms if a != reference},
        {a: slope.get(a, 0.0) for a in arms}, rating_means, rating_slope, latent,
        float(overall_sd),
    )  # fmt: skip
    return truth, latents


def _scores(latent: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(latent), 1, 10).astype(np.int64)


def _typed(columns: Mapping[str, object], table: Table, extra: Sequence[str] = ()) -> pd.DataFrame:
    """A frame in the schema's column order and pandas types (as analysis.io loads them)."""
    kinds = {c.name: c.dtype for c in table.columns}
    length = max(len(v) for v in columns.values() if isinstance(v, np.ndarray | list))
    frame = {}
    for name in [*table.names, *extra]:
        kind, values = kinds.get(name, "float"), columns[name]
        if not isinstance(values, np.ndarray | list):
            values = np.full(length, values, dtype=object)
        if kind == "datetime":
            frame[name] = pd.Series(pd.to_datetime(np.asarray(values), utc=True)).dt.as_unit("us")
        elif kind == "bool":
            frame[name] = pd.Series(values, dtype="boolean")
        else:
            frame[name] = pd.Series(values, dtype=PANDAS_DTYPES[kind])
    return pd.DataFrame(frame)


def _ids(rng: np.random.Generator, n: int) -> list[str]:
    raw = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    return [str(uuid.UUID(bytes=row.tobytes(), version=4)) for row in raw]


def _group_index(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, position) for rows laid out as consecutive runs of `sizes`."""
    owner = np.repeat(np.arange(sizes.size), sizes)
    starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
    return owner, np.arange(owner.size) - starts


def _times(column: pd.Series) -> np.ndarray:
    """A UTC datetime column as naive datetime64[us] values, for vectorised arithmetic."""
    return column.dt.tz_convert(None).to_numpy(dtype="datetime64[us]")


def _seconds(values: np.ndarray) -> np.ndarray:
    return np.rint(values * 1e6).astype("timedelta64[us]")


def _draw(
    rng: np.random.Generator, code: np.ndarray, truth: Truth, latents: dict[str, dict[str, float]],
    checkpoints: Sequence[int], turns: int, exclusion_rate: float,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Participant-level values (one entry per participant, ratings one column per checkpoint)."""
    arms, n = truth.arms, code.size

    def per_arm(values: Mapping[str, float]) -> np.ndarray:
        return np.array([values[a] for a in arms])[code]

    u = rng.normal(0, PARTICIPANT_SD, n)
    overall = per_arm(latents["overall"])
    offsets = np.asarray(checkpoints, dtype=float) - turns
    ratings = overall[:, None] + per_arm(truth.trajectory_slope)[:, None] * offsets[None, :]
    wall = per_arm(truth.wall_seconds) * np.exp(rng.normal(-(TIME_LOG_SD**2) / 2, TIME_LOG_SD, n))
    return {
        "overall_interaction": _scores(overall + u + rng.normal(0, OVERALL_SD, n)),
        "document_quality": _scores(
            per_arm(latents["quality"]) + u / 2 + rng.normal(0, QUALITY_SD, n)
        ),
        "ratings": _scores(ratings + u[:, None] + rng.normal(0, RATING_SD, ratings.shape)),
        "wall_seconds": wall,
        "active_seconds": wall * rng.beta(*ACTIVE_SHARE, n),
        "n_user_turns": turns + rng.poisson(1.0, n),
        "task": rng.integers(0, len(TASKS), n),
        "topic": rng.integers(0, 4, n),
        "excluded": rng.random(n) < exclusion_rate,
        "reason": rng.integers(0, len(EXCLUSION_REASONS), n),
        "comprehension_failures": rng.poisson(0.2, n),
        "entered": np.arange(n) * 90.0 + rng.uniform(0, 60, n),
        "consent_delay": rng.uniform(20, 120, n),
    }


def _token_rows(
    rng: np.random.Generator, code: np.ndarray, n_turns: np.ndarray
) -> dict[str, np.ndarray]:
    """Per message row (user, assistant, user, ... per turn): owner, position, tokens."""
    owner, position = _group_index(2 * n_turns)
    is_user = position % 2 == 0
    reply = np.linspace(220.0, 300.0, code.max() + 1)[code]
    tokens = rng.poisson(np.where(is_user, 40.0, reply[owner])) + 1
    return {"owner": owner, "position": position, "is_user": is_user, "tokens": tokens}


def _participants_table(
    ids: list[str], code: np.ndarray, truth: Truth, draw: dict[str, np.ndarray],
    rows: dict[str, np.ndarray], checkpoints: Sequence[int],
) -> pd.DataFrame:  # fmt: skip
    n = code.size
    counts = np.bincount(rows["owner"], minlength=n)
    user = np.bincount(rows["owner"], rows["tokens"] * rows["is_user"], minlength=n)
    entered = START + _seconds(draw["entered"])
    consented = entered + _seconds(draw["consent_delay"])
    excluded, reason = draw["excluded"], np.array(EXCLUSION_REASONS)[draw["reason"]]
    task = np.array(TASKS)[draw["task"]]
    columns: dict[str, object] = {
        "participant_id": ids,
        "recruiting_id": [f"h{i[:8]}{i[-4:]}" for i in ids],
        "recruiting_source": "prolific",
        "is_pilot": False,
        "arm": np.array(truth.arms)[code],
        "task_type": task,
        "topic": np.char.add(np.char.add(task, " topic "), draw["topic"].astype(str)),
        "config_version": 1,
        "status": "completed",
        "outcome": "completed",
        "excluded": excluded,
        "exclusion_reason": np.where(excluded, reason.astype(object), None),
        "stratum": task,
        "entered_at": entered,
        "consented_at": consented,
        "consent_training": None,  # the synthetic study asks for neither extra
        "consent_sharing": None,
        "completed_at": consented + _seconds(draw["wall_seconds"]),
        "wall_seconds": draw["wall_seconds"],
        "active_seconds": draw["active_seconds"],
        "n_user_turns": draw["n_user_turns"],
        "n_complete_turns": draw["n_user_turns"],
        "assistant_tokens": np.bincount(rows["owner"], rows["tokens"], minlength=n) - user,
        "user_tokens": user + TEMPLATE_TOKENS * counts // 2,
        "user_chars": user * 4,
        "comprehension_failures": draw["comprehension_failures"],
        "attention_failures": (excluded & (reason == EXCLUSION_REASONS[0])).astype(int),
        "document_quality": draw["document_quality"].astype(float),
        "overall_interaction": draw["overall_interaction"].astype(float),
    }
    extra = [rating_column(k) for k in checkpoints]
    columns.update({c: draw["ratings"][:, j].astype(float) for j, c in enumerate(extra)})
    return _typed(columns, PARTICIPANTS, extra)


def _turn_ratings_table(participants: pd.DataFrame, checkpoints: Sequence[int]) -> pd.DataFrame:
    n, k = len(participants), len(checkpoints)
    scores = participants[[rating_column(c) for c in checkpoints]].to_numpy().ravel()
    after = np.tile(np.asarray(checkpoints), n)
    consented = _times(participants["consented_at"]).repeat(k)
    wall = participants["wall_seconds"].to_numpy().repeat(k)
    turns = participants["n_user_turns"].to_numpy(dtype=float).repeat(k)
    columns = {
        "participant_id": participants["participant_id"].to_numpy().repeat(k),
        "arm": participants["arm"].to_numpy().repeat(k),
        "after_turn": after,
        "score": scores.astype(np.int64),
        "question_version": "1",
        "created_at": consented + _seconds(wall * (0.1 + 0.8 * after / (turns + 1))),
    }
    return _typed(columns, TURN_RATINGS)


def _messages_table(
    rng: np.random.Generator, code: np.ndarray, participants: pd.DataFrame, truth: Truth,
    rows: dict[str, np.ndarray], text_rng: np.random.Generator,
) -> pd.DataFrame:  # fmt: skip
    owner, position, is_user, tokens = (
        rows["owner"],
        rows["position"],
        rows["is_user"],
        rows["tokens"],
    )
    n = owner.size
    sizes = np.bincount(owner, minlength=len(participants))
    # Each assistant prompt holds the system prompt and every earlier message of the conversation.
    added = np.where(is_user, tokens + TEMPLATE_TOKENS, tokens)
    before = np.cumsum(added) - added
    before -= before[(np.cumsum(sizes) - sizes)[owner]]
    assistant = ~is_user
    arm_of = code[owner]
    ttft = rng.uniform(0.2, 1.2, n)
    spread = 0.1 + 0.8 * (position + 1) / (sizes[owner] + 1)
    consented = _times(participants["consented_at"])[owner]
    wall = participants["wall_seconds"].to_numpy()[owner]
    user_text = np.array([f"Could you make part {i} more concrete?" for i in range(20)], object)
    reply_text = np.array([f"Here is a revised draft, version {i}." for i in range(20)], object)
    content = np.where(
        is_user, user_text[rng.integers(0, 20, n)], reply_text[rng.integers(0, 20, n)]
    )
    # Replies long and varied enough to build documents from (analysis.synthetic_documents).
    content[assistant] = synthetic_documents.reply_texts(text_rng, int(assistant.sum()))

    def reply_only(values: np.ndarray) -> np.ndarray:
        return np.where(assistant, values, np.array(None, dtype=object))

    columns = {
        "message_id": np.arange(1, n + 1),
        "participant_id": participants["participant_id"].to_numpy()[owner],
        "arm": np.array(truth.arms, object)[arm_of],
        "turn_index": position // 2 + 1,
        "role": np.where(is_user, "user", "assistant"),
        "attempt": 1,
        "status": "complete",
        "content": content,
        "model": reply_only(np.array([f"study/{a}" for a in truth.arms], object)[arm_of]),
        "prompt_ref": reply_only(np.array([f"{a}@1#0000" for a in truth.arms], object)[arm_of]),
        "generation_params": reply_only(np.full(n, '{"temperature": 0.7}', object)),
        "prompt_tokens": np.where(assistant, SYSTEM_TOKENS + before, np.nan),
        "completion_tokens": np.where(assistant, tokens, np.nan),
        "time_to_first_token": np.where(assistant, ttft, np.nan),
        "duration": np.where(assistant, ttft + tokens / 60.0, np.nan),
        "error_kind": None,
        "finish_reason": reply_only(np.full(n, "stop", object)),
        "continuation_of": np.full(n, np.nan),
        "created_at": consented + _seconds(wall * spread),
    }
    return _typed(columns, MESSAGES)


def _events_table(participants: pd.DataFrame) -> pd.DataFrame:
    turns = participants["n_user_turns"].to_numpy(dtype=np.int64)
    owner, position = _group_index(turns + 3)
    last = position == (turns + 2)[owner]
    turn = np.clip(position - 1, 0, None)
    kinds = np.array(["study.participant.entered", "study.consent.given", "study.turn.completed"])
    kind = np.where(last, "study.participant.completed", kinds[np.minimum(position, 2)])
    payloads = np.array(["{}", *(f'{{"turn": {k}}}' for k in range(1, turns.max() + 1))], object)
    payload = np.where((position >= 2) & ~last, payloads[np.minimum(turn, turns.max())], "{}")
    entered = _times(participants["entered_at"])[owner]
    consented = _times(participants["consented_at"])[owner]
    wall = participants["wall_seconds"].to_numpy()[owner]
    during = consented + _seconds(wall * (0.1 + 0.8 * turn / (turns[owner] + 1)))
    created = np.where(position == 0, entered, np.where(position == 1, consented, during))
    created = np.where(last, _times(participants["completed_at"])[owner], created)
    columns = {
        "event_id": np.arange(1, owner.size + 1),
        "participant_id": participants["participant_id"].to_numpy()[owner],
        "kind": kind,
        "payload": payload,
        "created_at": created,
    }
    return _typed(columns, EVENTS)


def _survey_tables(
    participants: pd.DataFrame, finals: Mapping[str, str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = len(participants)
    surveys = {
        "participant_id": participants["participant_id"].to_numpy(),
        "arm": participants["arm"].to_numpy(),
        "document_text": [finals[p] for p in participants["participant_id"]],
        "document_quality": participants["document_quality"].to_numpy(dtype=np.int64),
        "overall_interaction": participants["overall_interaction"].to_numpy(dtype=np.int64),
        "strengths": "Asked useful questions.",
        "weaknesses": "Sometimes verbose.",
        "extra_answers": '{"attention_check": "blue"}',
        "created_at": _times(participants["completed_at"]),
    }
    questions = ("Who is the audience?", "What tone do you want?", "What must it include?")
    answers = {
        "participant_id": participants["participant_id"].to_numpy().repeat(len(questions)),
        "question_index": np.tile(np.arange(len(questions)), n),
        "question": np.tile(np.array(questions), n),
        "answer": np.tile(np.array(["Friends", "Warm", "A story"]), n),
    }
    return _typed(surveys, FINAL_SURVEYS), _typed(answers, INTENT_ANSWERS)


def synthetic_study(
    *,
    n_per_arm: int | Mapping[str, int],
    seed: int,
    arms: Sequence[str] = ("base", "proactive", "collabllm"),
    reference: str = "base",
    satisfaction_change: Mapping[str, float] = SATISFACTION_CHANGE,
    time_change: Mapping[str, float] = TIME_CHANGE,
    checkpoints: Sequence[int] = (3, 6, 9),
    trajectory_slope: Mapping[str, float] = TRAJECTORY_SLOPE,
    exclusion_rate: float = 0.0,
    messages: bool = False,
    turns: int = 9,
    base_satisfaction: float = 7.0,
    base_minutes: float = 28.0,
    document_quality: Mapping[str, float] = QUALITY_MEAN,
) -> SyntheticStudy:
    """A study with known effects as export tables (`.truth` holds the generating values).

    Everyone completes at least `turns` turns, so every checkpoint (<= turns) is rated; the
    participants table is the same with or without `messages`.
    """
    if reference not in arms:
        raise ValueError(f"reference {reference!r} is not one of the arms {list(arms)}")
    if any(k < 1 or k > turns for k in checkpoints):
        raise ValueError(f"checkpoints must lie in 1..{turns}: {list(checkpoints)}")
    counts = [n_per_arm] * len(arms) if isinstance(n_per_arm, int) else [n_per_arm[a] for a in arms]
    truth, latents = _truth(
        arms, reference, base_satisfaction, base_minutes * 60, satisfaction_change, time_change,
        trajectory_slope, document_quality, sorted(checkpoints), turns,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    code = rng.permutation(np.repeat(np.arange(len(arms)), counts))
    draw = _draw(rng, code, truth, latents, sorted(checkpoints), turns, exclusion_rate)
    rows = _token_rows(rng, code, draw["n_user_turns"])
    ids = _ids(rng, code.size)
    participants = _participants_table(ids, code, truth, draw, rows, sorted(checkpoints))
    tables = {
        "participants": participants,
        "turn_ratings": _turn_ratings_table(participants, sorted(checkpoints)),
    }
    if messages:
        # A stream of its own, so the documents leave every other table as it was without them.
        text_rng = np.random.default_rng((seed, 1))
        tables["messages"] = _messages_table(rng, code, participants, truth, rows, text_rng)
        tables["events"] = _events_table(participants)
        values = synthetic_documents.truth(truth.arms, turns)
        versions, finals = synthetic_documents.version_columns(
            text_rng, participants, tables["messages"], values
        )
        tables["document_versions"] = _typed(versions, DOCUMENT_VERSIONS)
        tables["final_surveys"], tables["intent_answers"] = _survey_tables(participants, finals)
        truth = dataclasses.replace(truth, documents=values)
    return SyntheticStudy(tables, truth)
