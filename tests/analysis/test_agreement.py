"""Agreement of the multiturn-aware reward with people's ratings, against pairs built here by hand,
scipy's Spearman and statsmodels' MixedLM fitted directly, and synthetic studies with a known
link."""

import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats as sps

from analysis.agreement import (
    AGREEMENT_COLUMNS,
    agreement_section,
    checkpoint_agreement,
    checkpoint_pairs,
    cluster_spearman_ci,
    final_agreement,
    mixed_model,
    reply_counts,
    weighted_spearman,
)
from analysis.report import jsonable
from analysis.synthetic_agreement import FAILURE_ERROR, synthetic_rewards


@pytest.fixture(scope="module")
def small():
    return synthetic_rewards(40, 1.0, seed=8, failure_rate=0.1, discrete=True)


@pytest.fixture(scope="module")
def linked():
    return synthetic_rewards(300, 2.0, seed=3)


@pytest.fixture(scope="module")
def unlinked():
    return synthetic_rewards(300, 0.0, seed=4)


def _by_hand(replies: pd.DataFrame, term: str = "mr") -> dict[str, list[tuple[int, float]]]:
    """participant -> [(turn, value)] of the replies whose scoring succeeded."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in replies.itertuples(index=False):
        value = getattr(row, term)
        if row.error == "" and not np.isnan(row.mr) and not np.isnan(value):
            out.setdefault(row.participant_id, []).append((row.turn_index, value))
    return out


def test_rho_per_checkpoint_equals_spearmanr_on_pairs_built_by_hand(small):
    result = checkpoint_agreement(small.reply_rewards, small.turn_ratings, seed=1, n_boot=200)
    assert list(result.columns) == ["after_turn", *AGREEMENT_COLUMNS]
    replies = _by_hand(small.reply_rewards, "task")
    for turn in (3, 6, 9):
        for arm in ("all", "base"):
            x, y = [], []
            for rating in small.turn_ratings.itertuples(index=False):
                before = [v for t, v in replies.get(rating.participant_id, []) if t <= turn]
                if rating.after_turn == turn and before and arm in ("all", rating.arm):
                    x.append(sum(before) / len(before))
                    y.append(rating.score)
            row = result.loc[
                result.after_turn.eq(turn) & result.arm.eq(arm) & result.term.eq("task")
            ].iloc[0]
            expected = sps.spearmanr(x, y)
            assert row.n_pairs == len(x) == row.n_participants
            assert row.rho == pytest.approx(expected.statistic, abs=1e-12)
            assert row.p == pytest.approx(expected.pvalue, rel=1e-9)
            assert row.ci_low < row.rho < row.ci_high


def test_the_pooled_row_pairs_every_checkpoint_and_has_no_independence_p(small):
    result = checkpoint_agreement(small.reply_rewards, small.turn_ratings, seed=1, n_boot=200)
    pooled = result.loc[result.after_turn.eq("all") & result.arm.eq("all")].set_index("term")
    single = result.loc[result.after_turn.ne("all") & result.arm.eq("all")]
    assert pooled.loc["mr", "n_pairs"] == single.loc[single.term.eq("mr"), "n_pairs"].sum()
    assert pooled.loc["mr", "n_participants"] == 40
    pairs = checkpoint_pairs(small.reply_rewards, small.turn_ratings)
    expected = sps.spearmanr(pairs["mr"], pairs["score"]).statistic
    assert pooled.loc["mr", "rho"] == pytest.approx(expected)
    assert pooled["p"].isna().all()


def test_final_rho_equals_spearmanr_of_each_participants_mean_over_all_replies(small):
    result = final_agreement(small.reply_rewards, small.participants, seed=1, n_boot=200)
    replies = _by_hand(small.reply_rewards)
    people = small.participants.set_index("participant_id")
    ids = sorted(replies)
    x = [np.mean([v for _, v in replies[p]]) for p in ids]
    for outcome in ("overall_interaction", "document_quality"):
        row = result.loc[result.outcome.eq(outcome) & result.arm.eq("all") & result.term.eq("mr")]
        expected = sps.spearmanr(x, people.loc[ids, outcome]).statistic
        assert row["rho"].iloc[0] == pytest.approx(expected, abs=1e-12)
        assert row["n_participants"].iloc[0] == len(ids)


def test_weighted_spearman_equals_spearmanr_of_the_repeated_rows():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 30).astype(float), rng.integers(0, 4, 30).astype(float)
    weights = rng.integers(0, 3, (6, 30))
    got = weighted_spearman(weights.astype(float), x, y)
    for w, rho in zip(weights, got, strict=True):
        assert rho == pytest.approx(sps.spearmanr(np.repeat(x, w), np.repeat(y, w)).statistic)


def _clustered(rng: np.random.Generator, people: int, rows: int) -> tuple[np.ndarray, ...]:
    """Pairs whose rows within a participant are nearly copies of one another."""
    level_x, level_y = rng.normal(size=people), rng.normal(size=people)
    level_y += 0.3 * level_x
    ids = np.repeat(np.arange(people), rows)
    x = level_x[ids] + rng.normal(0, 0.05, ids.size)
    y = level_y[ids] + rng.normal(0, 0.05, ids.size)
    return x, y, ids


def test_duplicating_every_participants_rows_leaves_the_cluster_ci_unchanged():
    x, y, ids = _clustered(np.random.default_rng(1), 40, 1)
    twice = (np.tile(x, 2), np.tile(y, 2))
    once = cluster_spearman_ci(x, y, ids, seed=5, n_boot=400, level=0.95)
    doubled = cluster_spearman_ci(*twice, np.tile(ids, 2), seed=5, n_boot=400, level=0.95)
    np.testing.assert_allclose(doubled, once)
    rows = np.arange(2 * ids.size)  # each row its own cluster: the naive row bootstrap
    naive = cluster_spearman_ci(*twice, rows, seed=5, n_boot=400, level=0.95)
    assert naive[1] - naive[0] < 0.85 * (once[1] - once[0])


def test_the_pooled_ci_is_wider_than_a_row_bootstrap_when_a_persons_rows_agree():
    x, y, ids = _clustered(np.random.default_rng(2), 30, 5)
    cluster = cluster_spearman_ci(x, y, ids, seed=3, n_boot=400, level=0.95)
    naive = cluster_spearman_ci(x, y, np.arange(ids.size), seed=3, n_boot=400, level=0.95)
    assert cluster[1] - cluster[0] > 1.5 * (naive[1] - naive[0])


def test_the_same_seed_gives_the_same_intervals_and_another_seed_others(small):
    args = (small.reply_rewards, small.turn_ratings)
    first = checkpoint_agreement(*args, seed=7, n_boot=200)
    pd.testing.assert_frame_equal(first, checkpoint_agreement(*args, seed=7, n_boot=200))
    other = checkpoint_agreement(*args, seed=8, n_boot=200)
    np.testing.assert_array_equal(first["rho"], other["rho"])
    assert not np.allclose(first["ci_low"], other["ci_low"])


def test_the_mixed_model_recovers_the_true_slope_and_icc(linked):
    model = mixed_model(linked.reply_rewards, linked.turn_ratings)
    assert model.enough and model.converged and model.why == ""
    assert (model.n_obs, model.n_groups) == (900, 300)
    assert model.ci_low < linked.true_slope < model.ci_high
    assert model.icc == pytest.approx(linked.icc, abs=0.1)
    assert model.p < 1e-6


def test_the_mixed_model_matches_statsmodels_fitted_directly(small):
    model = mixed_model(small.reply_rewards, small.turn_ratings)
    replies = _by_hand(small.reply_rewards)
    rows = []
    for rating in small.turn_ratings.itertuples(index=False):
        before = [v for t, v in replies.get(rating.participant_id, []) if t <= rating.after_turn]
        if before:
            rows.append((rating.participant_id, float(rating.score), float(np.mean(before))))
    data = pd.DataFrame(rows, columns=["pid", "score", "mr"])
    direct = smf.mixedlm("score ~ mr", data, groups=data["pid"]).fit(reml=True)
    assert model.n_obs == len(data)
    assert model.slope == pytest.approx(direct.fe_params["mr"], rel=1e-6)
    assert model.se == pytest.approx(direct.bse_fe["mr"], rel=1e-5)
    assert model.p == pytest.approx(direct.pvalues["mr"], rel=1e-4)
    assert model.ci_low == pytest.approx(direct.conf_int().loc["mr", 0], rel=1e-5)
    assert model.group_var == pytest.approx(float(direct.cov_re.iloc[0, 0]), rel=1e-5)
    assert model.residual_var == pytest.approx(direct.scale, rel=1e-5)


def test_with_no_true_link_rhos_ci_covers_zero(unlinked):
    result = checkpoint_agreement(unlinked.reply_rewards, unlinked.turn_ratings, seed=2, n_boot=300)
    mr = result.loc[result.term.eq("mr") & result.arm.eq("all")]
    assert len(mr) == 4 and mr["enough"].all()
    assert (mr.ci_low < 0).all() and (mr.ci_high > 0).all()
    model = mixed_model(unlinked.reply_rewards, unlinked.turn_ratings)
    assert model.ci_low < 0 < model.ci_high


def test_five_participants_are_too_few_to_conclude_anything():
    study = synthetic_rewards(5, 2.0, seed=1)
    result = checkpoint_agreement(study.reply_rewards, study.turn_ratings, seed=1, n_boot=200)
    assert not result["enough"].any()
    assert result["why"].str.contains("too few to conclude anything").all()
    assert result[["rho", "p", "ci_low", "ci_high"]].isna().all().all()
    assert result.loc[result.after_turn.eq(3) & result.arm.eq("all"), "n_participants"].eq(5).all()
    final = final_agreement(study.reply_rewards, study.participants, seed=1, n_boot=200)
    assert not final["enough"].any() and final["rho"].isna().all()
    model = mixed_model(study.reply_rewards, study.turn_ratings)
    assert not model.enough and "too few" in model.why and np.isnan(model.slope)
    assert model.n_groups == 5


def test_equal_ratings_leave_nothing_to_agree_with(small):
    ratings = small.turn_ratings.assign(score=7)
    result = checkpoint_agreement(small.reply_rewards, ratings, seed=1, n_boot=200)
    assert not result["enough"].any() and result["rho"].isna().all()
    assert result["why"].str.contains("every rating is the same").all()
    model = mixed_model(small.reply_rewards, ratings)
    assert not model.enough and "same" in model.why


def test_failed_replies_are_left_out_and_counted_never_read_as_zero(linked):
    replies = linked.reply_rewards.copy()
    failed = replies["turn_index"].isin([1, 2, 3]) & replies["participant_id"].str.endswith("1")
    replies.loc[failed, ["mr", "task", "penalty", "interactivity"]] = np.nan
    replies.loc[failed, "error"] = FAILURE_ERROR
    # An error recorded beside a number still counts as a failure.
    also = replies["turn_index"].eq(3) & replies["participant_id"].str.endswith("2")
    replies.loc[also, ["mr", "error"]] = (0.0, "judge returned no score")
    counts = reply_counts(replies).set_index("arm")
    assert counts.loc["all", "n_failed"] == failed.sum() + also.sum()
    assert counts.loc["all", "n_scored"] == len(replies) - failed.sum() - also.sum()
    pairs = checkpoint_pairs(replies, linked.turn_ratings)
    at3 = pairs.loc[pairs.after_turn.eq(3)].set_index("participant_id")["mr"]
    expected = replies.loc[~failed & ~also & replies.turn_index.le(3)].groupby("participant_id")
    pd.testing.assert_series_equal(at3, expected["mr"].mean(), check_names=False)
    # The participants whose first three replies all failed have no pair at turn 3.
    assert len(at3) == 300 - 30
    zeros = replies.assign(mr=replies["mr"].fillna(0)).loc[replies.turn_index.le(6)]
    zero_means = zeros.groupby("participant_id")["mr"].mean()
    at6 = pairs.loc[pairs.after_turn.eq(6)].set_index("participant_id")["mr"]
    assert not np.allclose(at6, zero_means.loc[at6.index])


def test_the_section_bundles_everything_as_json(small):
    section = agreement_section(
        small.reply_rewards, small.turn_ratings, small.participants, seed=1, n_boot=200
    )
    assert set(section["mixed_model"]) == {"all", "base", "collabllm"}
    assert section["mixed_model"]["all"]["n_groups"] == 40
    assert any("left out (not counted as 0)" in note for note in section["notes"])
    text = json.dumps(jsonable(section), allow_nan=False)
    records = json.loads(text)["checkpoints"]
    assert {r["after_turn"] for r in records} == {3, 6, 9, "all"}


def test_discrete_synthetic_ratings_are_whole_scores_from_1_to_10(small):
    scores = pd.concat([small.turn_ratings["score"], small.participants["overall_interaction"]])
    assert scores.between(1, 10).all() and (scores == scores.round()).all()
