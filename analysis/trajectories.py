"""Rating trajectories: mean blocking rating per checkpoint per arm, and the mixed-effects model
`score ~ arm * after_turn + (1 | participant)` whose arm-by-turn terms test for diverging trends."""

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats as sps

from analysis.stats import bootstrap_ci, numeric, sub_seed

COEFFICIENT_COLUMNS = ["term", "estimate", "se", "z", "p", "ci_low", "ci_high"]
SLOPE_COLUMNS = ["arm", "slope", "se", "ci_low", "ci_high"]


def trajectory_means(
    turn_ratings: pd.DataFrame, *, seed: int, n_boot: int = 2000, level: float = 0.95
) -> pd.DataFrame:
    """Mean rating per (arm, after_turn) with a percentile bootstrap CI."""
    rows = []
    for (arm, turn), group in turn_ratings.groupby(["arm", "after_turn"], sort=True, observed=True):
        x = numeric(group["score"])
        if x.size == 0:
            continue
        ci = bootstrap_ci(x, seed=sub_seed(seed, arm, turn), n_boot=n_boot, level=level)
        rows.append([str(arm), int(turn), x.size, float(x.mean()), *ci])
    return pd.DataFrame(rows, columns=["arm", "after_turn", "n", "mean", "ci_low", "ci_high"])


@dataclass
class MixedModel:
    formula: str
    coefficients: pd.DataFrame
    n_obs: int
    n_groups: int
    converged: bool
    reference_arm: str
    group_var: float = np.nan  # random-intercept (between-participant) variance
    residual_var: float = np.nan  # within-participant residual variance (statsmodels' scale)
    # group_var / (group_var + residual_var): the share of rating variance, net of the fixed
    # effects, that lies between participants (the correlation of two ratings of one person).
    icc: float = np.nan
    slopes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SLOPE_COLUMNS))
    warnings: list[str] = field(default_factory=list)


def _reference(arms: list[str], reference_arm: str | None) -> str:
    if reference_arm is not None:
        if reference_arm not in arms:
            raise ValueError(f"reference arm {reference_arm!r} has no ratings")
        return reference_arm
    return "base" if "base" in arms else arms[0]


def _slopes(result: Any, arms: list[str], reference: str, z: float) -> pd.DataFrame:
    # Each arm's slope is the reference slope plus its interaction term; its SE comes from the
    # fixed effects' covariance, so the per-arm intervals account for the shared estimate.
    names = list(result.fe_params.index)
    cov = result.cov_params().loc[names, names].to_numpy()
    rows = []
    for arm in arms:
        weights = np.array([name == "after_turn" for name in names], dtype=float)
        if arm != reference:
            weights += [name.endswith(f"[T.{arm}]:after_turn") for name in names]
        slope = float(weights @ result.fe_params.to_numpy())
        se = float(np.sqrt(weights @ cov @ weights))
        rows.append([arm, slope, se, slope - z * se, slope + z * se])
    return pd.DataFrame(rows, columns=SLOPE_COLUMNS)


def _icc(between: float, within: float) -> float:
    total = between + within
    return between / total if np.isfinite(total) and total > 0 else np.nan


def mixed_model(
    turn_ratings: pd.DataFrame, *, reference_arm: str | None = None, level: float = 0.95
) -> MixedModel:
    """Fit `score ~ C(arm) * after_turn` with a random intercept per participant (REML).

    Never raises on a poor fit: convergence warnings and fitting errors give converged=False.
    """
    data = turn_ratings[["participant_id", "arm", "after_turn", "score"]].copy()
    data["score"] = pd.to_numeric(data["score"], errors="coerce").astype(float)
    data["after_turn"] = pd.to_numeric(data["after_turn"], errors="coerce").astype(float)
    data = data.dropna().reset_index(drop=True)
    data["arm"] = data["arm"].astype("str")
    data["participant_id"] = data["participant_id"].astype("str")
    arms = sorted(data["arm"].unique())
    reference = _reference(arms, reference_arm) if arms else (reference_arm or "")
    formula = f"score ~ C(arm, Treatment(reference={reference!r})) * after_turn"
    empty = MixedModel(
        formula, pd.DataFrame(columns=COEFFICIENT_COLUMNS), len(data),
        data["participant_id"].nunique(), False, reference,
    )  # fmt: skip
    if data.empty or len(arms) < 1:
        return empty
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = smf.mixedlm(formula, data, groups=data["participant_id"])
            result = model.fit(reml=True)
            z = float(sps.norm.ppf(0.5 + level / 2))
            names = list(result.fe_params.index)
            se = result.bse_fe.loc[names]
            coefficients = pd.DataFrame({
                "term": names,
                "estimate": result.fe_params.to_numpy(),
                "se": se.to_numpy(),
                "z": result.tvalues.loc[names].to_numpy(),
                "p": result.pvalues.loc[names].to_numpy(),
                "ci_low": (result.fe_params - z * se).to_numpy(),
                "ci_high": (result.fe_params + z * se).to_numpy(),
            })  # fmt: skip
            slopes = _slopes(result, arms, reference, z)
            group_var = float(np.asarray(result.cov_re)[0, 0])
            residual_var = float(result.scale)
        except (ValueError, np.linalg.LinAlgError, IndexError, KeyError) as exc:
            empty.warnings = [f"{type(exc).__name__}: {exc}"]  # kept for the report
            return empty
    messages = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
    # statsmodels retries other optimisers after a failure and sets `converged` on the last one;
    # a non-positive-definite Hessian leaves the standard errors meaningless, so it counts too.
    converged = bool(result.converged) and not any("positive definite" in m for m in messages)
    return MixedModel(
        formula, coefficients, int(result.nobs), len(result.model.group_labels), converged,
        reference, group_var, residual_var, _icc(group_var, residual_var), slopes, messages,
    )  # fmt: skip
