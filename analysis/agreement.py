"""Does the multiturn-aware reward agree with people? The reward (MR) and its terms (task metric,
token penalty, interactivity) of each assistant reply against the participant's own ratings.

Input `reply_rewards` has one row per scored assistant reply: participant_id, arm, turn_index
(1-based), mr, task, penalty, interactivity and error. A reply whose scoring failed (mr missing or
not finite, or an error recorded) is left out and counted, never read as a reward of 0.

At a rating checkpoint (turn_ratings.after_turn = k) a participant's value of a term is the mean of
that term over all their scored replies with turn_index <= k, i.e. everything they had seen when
they rated, not only the replies since the previous checkpoint. Against the final survey it is the
mean over all their scored replies.

Agreement is Spearman's rho between these means and the ratings, with a percentile bootstrap CI
that resamples participants (a cluster bootstrap: all of a participant's rows go in or out
together), so the pooled row over every checkpoint, which has several rows per participant, is not
made falsely precise by counting one person several times.
"""

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats as sps

from analysis.stats import percentile_interval, sub_seed

TERMS = ("mr", "task", "penalty", "interactivity")
FINAL_OUTCOMES = ("overall_interaction", "document_quality")
MIN_PARTICIPANTS = 10  # fewer people than this and a rank correlation says nothing
ALL = "all"
AGREEMENT_COLUMNS = [
    "arm",
    "term",
    "n_pairs",
    "n_participants",
    "rho",
    "p",
    "ci_low",
    "ci_high",
    "enough",
    "why",
]
_BLOCK_CELLS = 1 << 22  # bootstrap weights are built in blocks of about this many cells


def succeeded(reply_rewards: pd.DataFrame) -> np.ndarray:
    """Per reply, whether its scoring succeeded: mr finite and no error recorded."""
    mr = pd.to_numeric(reply_rewards["mr"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    error = reply_rewards["error"].fillna("").astype("str").str.strip()
    return np.isfinite(mr) & error.eq("").to_numpy()


def scored(reply_rewards: pd.DataFrame) -> pd.DataFrame:
    """The replies whose scoring succeeded, terms as floats."""
    kept = reply_rewards.loc[
        succeeded(reply_rewards), ["participant_id", "arm", "turn_index", *TERMS]
    ].copy()
    for term in TERMS:
        kept[term] = pd.to_numeric(kept[term], errors="coerce").astype(float)
    return kept.astype({"participant_id": "str", "arm": "str", "turn_index": "int64"})


def reply_counts(reply_rewards: pd.DataFrame) -> pd.DataFrame:
    """Per arm (and "all"): replies, scored replies, failed ones left out, participants scored."""
    frame = reply_rewards.assign(
        ok=succeeded(reply_rewards), arm=reply_rewards["arm"].astype("str")
    )
    rows = []
    for arm in [ALL, *sorted(frame["arm"].unique())]:
        mine = frame if arm == ALL else frame.loc[frame["arm"] == arm]
        n_ok = int(mine["ok"].sum())
        people = mine.loc[mine["ok"], "participant_id"].nunique()
        rows.append([arm, len(mine), n_ok, len(mine) - n_ok, people])
    columns = ["arm", "n_replies", "n_scored", "n_failed", "n_participants_scored"]
    return pd.DataFrame(rows, columns=columns)


def checkpoint_pairs(reply_rewards: pd.DataFrame, turn_ratings: pd.DataFrame) -> pd.DataFrame:
    """One row per rating with a scored reply before it: participant_id, arm, after_turn, score
    and each term's mean over the participant's scored replies with turn_index <= after_turn."""
    ratings = turn_ratings[["participant_id", "arm", "after_turn", "score"]].copy()
    ratings["score"] = pd.to_numeric(ratings["score"], errors="coerce").astype(float)
    ratings = ratings.dropna(subset=["score", "after_turn"]).astype(
        {"participant_id": "str", "arm": "str", "after_turn": "int64"}
    )
    replies = scored(reply_rewards).drop(columns="arm")
    joined = ratings.merge(replies, on="participant_id")
    joined = joined.loc[joined["turn_index"] <= joined["after_turn"]]
    keys = ["participant_id", "arm", "after_turn", "score"]
    means = joined.groupby(keys, sort=True)[list(TERMS)].mean().reset_index()
    return means.sort_values(["after_turn", "participant_id"], ignore_index=True)


def final_pairs(reply_rewards: pd.DataFrame, participants: pd.DataFrame) -> pd.DataFrame:
    """One row per participant with a scored reply: arm, the final ratings and each term's mean
    over all their scored replies."""
    means = scored(reply_rewards).groupby("participant_id")[list(TERMS)].mean().reset_index()
    people = participants[["participant_id", "arm", *FINAL_OUTCOMES]].copy()
    people = people.astype({"participant_id": "str", "arm": "str"})
    for outcome in FINAL_OUTCOMES:
        people[outcome] = pd.to_numeric(people[outcome], errors="coerce").astype(float)
    return people.merge(means, on="participant_id").sort_values("participant_id", ignore_index=True)


def too_few(n_participants: int, ratings: np.ndarray, values: np.ndarray) -> str:
    """Why these pairs cannot show agreement, or "" when they can."""
    if n_participants < MIN_PARTICIPANTS:
        return (
            f"too few to conclude anything: {n_participants} participants with both a rating and "
            f"a scored reply (at least {MIN_PARTICIPANTS} needed)"
        )
    if np.unique(ratings).size < 2:
        return "every rating is the same, so no ordering can agree or disagree with it"
    if np.unique(values).size < 2:
        return "every reward value is the same, so it orders nobody"
    return ""


def _ranks(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mid-ranks of `values` in the data where row j appears weights[b, j] times, per row b."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    group = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1
    totals = np.add.reduceat(weights[:, order], starts, axis=1)
    mid = np.cumsum(totals, axis=1) - totals + (totals + 1) / 2
    ranks = np.empty(weights.shape)
    ranks[:, order] = mid[:, group]
    return ranks


def weighted_spearman(weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of the data with row j repeated weights[b, j] times, for each row b.

    Ties get mid-ranks as in scipy.stats.spearmanr; the sort is done once for all resamples.
    """
    rx, ry = _ranks(weights, x), _ranks(weights, y)
    total = weights.sum(axis=1, keepdims=True)
    dx = rx - (weights * rx).sum(axis=1, keepdims=True) / total
    dy = ry - (weights * ry).sum(axis=1, keepdims=True) / total
    with np.errstate(divide="ignore", invalid="ignore"):
        return (weights * dx * dy).sum(axis=1) / np.sqrt(
            (weights * dx**2).sum(axis=1) * (weights * dy**2).sum(axis=1)
        )


def cluster_spearman_ci(
    x: np.ndarray, y: np.ndarray, clusters: np.ndarray, *, seed: int, n_boot: int, level: float
) -> tuple[float, float]:
    """Percentile bootstrap CI of Spearman's rho that resamples whole clusters (participants)."""
    owner, labels = pd.factorize(pd.Series(clusters), sort=True)
    k = labels.size
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    block = max(1, _BLOCK_CELLS // max(owner.size, 1))
    for start in range(0, n_boot, block):
        size = min(block, n_boot - start)
        counts = rng.multinomial(k, np.full(k, 1 / k), size=size)
        out[start : start + size] = weighted_spearman(counts[:, owner].astype(float), x, y)
    return percentile_interval(out, level)


def _agreement_row(
    pairs: pd.DataFrame,
    rating: str,
    term: str,
    seed: int,
    n_boot: int,
    level: float,
    pooled: bool,
) -> dict[str, Any]:
    rows = pairs.dropna(subset=[rating, term])
    x, y = rows[term].to_numpy(float), rows[rating].to_numpy(float)
    n_people = rows["participant_id"].nunique()
    why = too_few(n_people, y, x)
    rho = p = low = high = np.nan
    if not why:
        result = sps.spearmanr(x, y)
        rho, p = float(result.statistic), np.nan if pooled else float(result.pvalue)
        clusters = rows["participant_id"].to_numpy()
        low, high = cluster_spearman_ci(x, y, clusters, seed=seed, n_boot=n_boot, level=level)
    return {
        "term": term,
        "n_pairs": len(rows),
        "n_participants": n_people,
        "rho": rho,
        "p": p,
        "ci_low": low,
        "ci_high": high,
        "enough": not why,
        "why": why,
    }


def _by_arm(pairs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    return [(ALL, pairs), *((str(a), g) for a, g in pairs.groupby("arm", sort=True))]


def checkpoint_agreement(
    reply_rewards: pd.DataFrame,
    turn_ratings: pd.DataFrame,
    *,
    seed: int,
    n_boot: int = 2000,
    level: float = 0.95,
) -> pd.DataFrame:
    """Spearman's rho between each term's mean up to a checkpoint and the rating given there, per
    checkpoint (after_turn) and for all checkpoints pooled (after_turn "all"), over all arms and
    per arm, with a participant-resampling bootstrap CI.

    p is spearmanr's (pairs taken as independent), so it is left empty on the pooled rows, where
    they are not; there only the CI speaks. Rows without enough data have n but no rho and a why.
    """
    pairs = checkpoint_pairs(reply_rewards, turn_ratings)
    points: list[Any] = sorted(pairs["after_turn"].unique().tolist())
    rows = []
    for point in [*points, ALL]:
        at = pairs if point == ALL else pairs.loc[pairs["after_turn"] == point]
        for arm, mine in _by_arm(at):
            for term in TERMS:
                cell_seed = sub_seed(seed, "checkpoint", point, arm, term)
                row = _agreement_row(mine, "score", term, cell_seed, n_boot, level, point == ALL)
                rows.append({"after_turn": point, "arm": arm, **row})
    return pd.DataFrame(rows, columns=["after_turn", *AGREEMENT_COLUMNS])


def final_agreement(
    reply_rewards: pd.DataFrame,
    participants: pd.DataFrame,
    *,
    seed: int,
    n_boot: int = 2000,
    level: float = 0.95,
) -> pd.DataFrame:
    """Spearman's rho between each term's mean over all of a participant's scored replies and
    their final overall_interaction and document_quality, over all arms and per arm."""
    pairs = final_pairs(reply_rewards, participants)
    rows = []
    for outcome in FINAL_OUTCOMES:
        for arm, mine in _by_arm(pairs):
            for term in TERMS:
                cell_seed = sub_seed(seed, "final", outcome, arm, term)
                row = _agreement_row(mine, outcome, term, cell_seed, n_boot, level, False)
                rows.append({"outcome": outcome, "arm": arm, **row})
    return pd.DataFrame(rows, columns=["outcome", *AGREEMENT_COLUMNS])


@dataclass
class AgreementModel:
    """`score ~ mr + (1 | participant)` fitted by REML: the slope is rating points per unit of
    mean MR up to the checkpoint, within and between participants alike."""

    formula: str
    n_obs: int
    n_groups: int
    enough: bool
    why: str
    converged: bool = False
    intercept: float = np.nan
    slope: float = np.nan
    se: float = np.nan
    ci_low: float = np.nan
    ci_high: float = np.nan
    p: float = np.nan
    group_var: float = np.nan  # random-intercept (between-participant) variance
    residual_var: float = np.nan  # within-participant residual variance
    # group_var / (group_var + residual_var): how alike two ratings of one person are, net of MR.
    icc: float = np.nan
    warnings: list[str] = field(default_factory=list)


def mixed_model(
    reply_rewards: pd.DataFrame,
    turn_ratings: pd.DataFrame,
    *,
    term: str = "mr",
    level: float = 0.95,
) -> AgreementModel:
    """Rating at each checkpoint on the mean `term` up to it, with a participant random
    intercept. Never raises: too few data or a failed fit give NaNs and a why."""
    data = checkpoint_pairs(reply_rewards, turn_ratings).dropna(subset=[term])
    data = data.rename(columns={term: "value"})
    formula = f"score ~ {term}"
    model = AgreementModel(formula, len(data), data["participant_id"].nunique(), False, "")
    model.why = too_few(model.n_groups, data["score"].to_numpy(), data["value"].to_numpy())
    if model.why:
        return model
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = smf.mixedlm("score ~ value", data, groups=data["participant_id"]).fit(
                reml=True
            )
            low, high = result.conf_int(alpha=1 - level).loc["value"]
        except (ValueError, np.linalg.LinAlgError, IndexError, KeyError) as exc:
            model.why = f"the model could not be fitted: {type(exc).__name__}: {exc}"
            return model
    model.warnings = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
    model.converged = bool(result.converged) and not any(
        "positive definite" in m for m in model.warnings
    )
    model.enough = True
    model.intercept, model.slope = (float(v) for v in result.fe_params[["Intercept", "value"]])
    model.se, model.p = float(result.bse_fe["value"]), float(result.pvalues["value"])
    model.ci_low, model.ci_high = float(low), float(high)
    model.group_var, model.residual_var = (
        float(np.asarray(result.cov_re)[0, 0]),
        float(result.scale),
    )
    total = model.group_var + model.residual_var
    model.icc = model.group_var / total if total > 0 else np.nan
    return model


def _notes(counts: pd.DataFrame, checkpoints: pd.DataFrame) -> list[str]:
    notes = []
    failed = int(counts.loc[counts["arm"] == ALL, "n_failed"].iloc[0]) if len(counts) else 0
    if failed:
        notes.append(f"{failed} replies whose scoring failed are left out (not counted as 0).")
    if len(checkpoints) and not checkpoints["enough"].any():
        notes.append("Too few data to conclude anything about agreement at any checkpoint.")
    return notes


def agreement_section(
    reply_rewards: pd.DataFrame,
    turn_ratings: pd.DataFrame,
    participants: pd.DataFrame,
    *,
    seed: int,
    n_boot: int = 2000,
    level: float = 0.95,
    arms: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The report's "Does the reward agree with people?" entries, as DataFrames and dicts that
    report.jsonable turns into JSON: reply counts, agreement per checkpoint and with the final
    survey, and the mixed model over all arms and per arm."""
    counts = reply_counts(reply_rewards)
    checkpoints = checkpoint_agreement(
        reply_rewards, turn_ratings, seed=seed, n_boot=n_boot, level=level
    )
    found = sorted(turn_ratings["arm"].astype("str").unique()) if arms is None else list(arms)
    models = {ALL: asdict(mixed_model(reply_rewards, turn_ratings, level=level))}
    for arm in found:
        mine = turn_ratings.loc[turn_ratings["arm"].astype("str") == arm]
        models[arm] = asdict(mixed_model(reply_rewards, mine, level=level))
    return {
        "min_participants": MIN_PARTICIPANTS,
        "terms": list(TERMS),
        "replies": counts,
        "checkpoints": checkpoints,
        "final": final_agreement(
            reply_rewards, participants, seed=seed, n_boot=n_boot, level=level
        ),
        "mixed_model": models,
        "notes": _notes(counts, checkpoints),
    }
