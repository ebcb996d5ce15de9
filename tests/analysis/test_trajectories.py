"""Rating trajectories against pandas summaries and a mixed model fitted directly with
statsmodels."""

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from analysis.synthetic import synthetic_study
from analysis.trajectories import COEFFICIENT_COLUMNS, mixed_model, trajectory_means


@pytest.fixture(scope="module")
def ratings() -> pd.DataFrame:
    return synthetic_study(n_per_arm=60, seed=11)["turn_ratings"]


def test_trajectory_means_match_pandas_means_and_counts(ratings):
    result = trajectory_means(ratings, seed=1, n_boot=500)
    expected = ratings.groupby(["arm", "after_turn"])["score"].agg(["count", "mean"]).reset_index()
    assert (
        result[["arm", "after_turn"]].values.tolist()
        == expected[["arm", "after_turn"]].values.tolist()
    )
    assert result["n"].tolist() == expected["count"].tolist()
    np.testing.assert_allclose(result["mean"], expected["mean"].astype(float))
    assert (result.ci_low <= result["mean"]).all() and (result["mean"] <= result.ci_high).all()


def test_the_mixed_model_matches_statsmodels_fitted_directly(ratings):
    result = mixed_model(ratings)
    data = ratings.astype({"score": float, "after_turn": float, "arm": object})
    direct = smf.mixedlm(
        "score ~ C(arm, Treatment(reference='base')) * after_turn",
        data,
        groups=data["participant_id"],
    ).fit(reml=True)
    coefficients = result.coefficients.set_index("term")
    assert list(result.coefficients.columns) == COEFFICIENT_COLUMNS
    assert list(coefficients.index) == list(direct.fe_params.index)
    np.testing.assert_allclose(coefficients["estimate"], direct.fe_params, rtol=1e-6)
    np.testing.assert_allclose(coefficients["se"], direct.bse_fe, rtol=1e-5)
    np.testing.assert_allclose(coefficients["p"], direct.pvalues[direct.fe_params.index], rtol=1e-4)
    low, high = direct.conf_int().loc[direct.fe_params.index].T.to_numpy()
    np.testing.assert_allclose(coefficients["ci_low"], low, rtol=1e-5)
    np.testing.assert_allclose(coefficients["ci_high"], high, rtol=1e-5)
    assert (result.n_obs, result.n_groups, result.converged) == (540, 180, True)
    assert result.reference_arm == "base"


def test_each_arms_slope_is_the_reference_slope_plus_its_interaction(ratings):
    result = mixed_model(ratings)
    estimate = result.coefficients.set_index("term")["estimate"]
    slopes = result.slopes.set_index("arm")["slope"]
    assert slopes["base"] == pytest.approx(estimate["after_turn"])
    interaction = "C(arm, Treatment(reference='base'))[T.collabllm]:after_turn"
    assert slopes["collabllm"] == pytest.approx(estimate["after_turn"] + estimate[interaction])


def test_the_reference_arm_can_be_chosen(ratings):
    result = mixed_model(ratings, reference_arm="collabllm")
    assert "reference='collabllm'" in result.formula
    assert any("[T.base]" in term for term in result.coefficients.term)
    with pytest.raises(ValueError, match="no ratings"):
        mixed_model(ratings, reference_arm="nonexistent")


def test_constant_ratings_fit_without_raising_and_keep_the_warnings():
    constant = pd.DataFrame(
        {
            "participant_id": np.repeat([f"p{i}" for i in range(6)], 3),
            "arm": np.repeat(["base", "collabllm"], 9),
            "after_turn": np.tile([3, 6, 9], 6),
            "score": 8,
        }
    )
    result = mixed_model(constant)
    assert result.coefficients.set_index("term").loc["Intercept", "estimate"] == pytest.approx(8)
    assert any("ConvergenceWarning" in w for w in result.warnings)


def test_a_fit_without_repeated_ratings_is_reported_as_not_converged():
    # One rating per participant: the random intercept is not identified from the residual.
    single = pd.DataFrame(
        {
            "participant_id": [f"p{i}" for i in range(8)],
            "arm": ["base", "collabllm"] * 4,
            "after_turn": [3, 6, 9, 3, 6, 9, 3, 6],
            "score": [5, 6, 7, 8, 5, 6, 7, 9],
        }
    )
    result = mixed_model(single)
    assert result.converged is False
    assert any("positive definite" in w for w in result.warnings)


def test_no_ratings_give_an_empty_unconverged_model():
    empty = pd.DataFrame(columns=["participant_id", "arm", "after_turn", "score"])
    result = mixed_model(empty)
    assert (result.n_obs, result.converged, result.coefficients.empty) == (0, False, True)


def test_the_variance_components_and_icc_match_statsmodels_fitted_directly(ratings):
    result = mixed_model(ratings)
    data = ratings.astype({"score": float, "after_turn": float, "arm": object})
    direct = smf.mixedlm(
        "score ~ C(arm, Treatment(reference='base')) * after_turn",
        data,
        groups=data["participant_id"],
    ).fit(reml=True)
    between, within = float(direct.cov_re.iloc[0, 0]), float(direct.scale)
    assert (result.group_var, result.residual_var) == pytest.approx((between, within))
    assert result.icc == pytest.approx(between / (between + within))


def test_a_known_intraclass_correlation_is_recovered():
    # score = arm level + slope * turn + u (participant, SD 1.2) + e (SD 0.9): ICC = 1.44 / 2.25.
    rng = np.random.default_rng(4)
    n, turns = 400, np.array([3.0, 6.0, 9.0, 12.0])
    arm = rng.choice(["base", "collabllm"], n)
    level = np.where(arm == "collabllm", 7.5, 7.0)[:, None] - 0.05 * turns[None, :]
    scores = level + rng.normal(0, 1.2, (n, 1)) + rng.normal(0, 0.9, (n, turns.size))
    ratings = pd.DataFrame({
        "participant_id": np.repeat([f"p{i}" for i in range(n)], turns.size),
        "arm": np.repeat(arm, turns.size),
        "after_turn": np.tile(turns, n),
        "score": scores.ravel(),
    })  # fmt: skip
    result = mixed_model(ratings)
    assert result.converged
    assert result.icc == pytest.approx(1.44 / 2.25, abs=0.05)
    assert result.group_var == pytest.approx(1.44, rel=0.15)
    assert result.residual_var == pytest.approx(0.81, rel=0.1)
