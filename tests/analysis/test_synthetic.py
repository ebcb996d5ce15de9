"""The synthetic study: export-shaped tables, exact truths, and the statistics recovering them
with intervals that cover the truth at about the nominal rate."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import stats
from analysis.io import empty_table, load_export, write_export
from analysis.schema import TABLES, rating_column
from analysis.synthetic import expected_score, latent_for, synthetic_study
from analysis.trajectories import mixed_model, trajectory_means

TABLE_NAMES = [
    "participants",
    "turn_ratings",
    "messages",
    "events",
    "final_surveys",
    "intent_answers",
    "document_versions",
]


@pytest.fixture(scope="module")
def study():
    return synthetic_study(n_per_arm=30, seed=5, messages=True, exclusion_rate=0.1)


@pytest.fixture(scope="module")
def large():
    return synthetic_study(n_per_arm=300, seed=2026)


def test_every_table_has_the_schemas_columns_in_order(study):
    assert sorted(study) == sorted(TABLE_NAMES)
    for name, table in study.items():
        extra = [rating_column(k) for k in (3, 6, 9)] if name == "participants" else []
        assert list(table.columns) == TABLES[name].names + extra


def test_every_column_has_the_type_the_loader_gives_it(study):
    for name, table in study.items():
        expected = empty_table(name).dtypes
        for column in TABLES[name].names:
            assert table[column].dtype == expected[column], f"{name}.{column}"


def test_the_tables_survive_a_round_trip_through_an_export_directory(study, tmp_path):
    loaded = load_export(write_export(study, tmp_path / "export"))
    for name in TABLE_NAMES:
        pd.testing.assert_frame_equal(getattr(loaded, name), study[name], check_like=False)


def test_the_same_seed_gives_the_same_study_and_messages_leave_participants_alone(study):
    again = synthetic_study(n_per_arm=30, seed=5, messages=True, exclusion_rate=0.1)
    for name in TABLE_NAMES:
        pd.testing.assert_frame_equal(again[name], study[name])
    without = synthetic_study(n_per_arm=30, seed=5, exclusion_rate=0.1)
    assert sorted(without) == ["participants", "turn_ratings"]
    pd.testing.assert_frame_equal(without["participants"], study["participants"])


def test_the_tables_agree_with_each_other(study):
    participants = study["participants"].set_index("participant_id")
    messages = study["messages"]
    per_participant = messages.groupby("participant_id")
    np.testing.assert_array_equal(
        per_participant.size()[participants.index], 2 * participants["n_user_turns"]
    )
    tokens = per_participant["completion_tokens"].sum()[participants.index]
    np.testing.assert_array_equal(tokens, participants["assistant_tokens"])
    wide = study["turn_ratings"].pivot(index="participant_id", columns="after_turn", values="score")
    for k in (3, 6, 9):
        np.testing.assert_array_equal(
            wide.loc[participants.index, k], participants[rating_column(k)]
        )
    surveys = study["final_surveys"].set_index("participant_id").loc[participants.index]
    np.testing.assert_array_equal(
        surveys["overall_interaction"], participants["overall_interaction"]
    )
    assert study["messages"]["message_id"].is_unique and study["events"]["event_id"].is_unique
    assert (participants["consented_at"] < participants["completed_at"]).all()


def test_scores_are_integers_from_1_to_10(study):
    for column in (
        "overall_interaction",
        "document_quality",
        *(rating_column(k) for k in (3, 6, 9)),
    ):
        values = study["participants"][column]
        assert values.between(1, 10).all() and (values == values.round()).all()


def test_exclusions_are_recorded_at_about_the_requested_rate():
    participants = synthetic_study(n_per_arm=1000, seed=3, exclusion_rate=0.1)["participants"]
    share = participants["excluded"].mean()
    assert 0.08 < share < 0.12
    reasons = participants.loc[participants["excluded"], "exclusion_reason"]
    assert reasons.notna().all() and (reasons != "").all()
    assert participants.loc[~participants["excluded"], "exclusion_reason"].isna().all()


def test_expected_score_matches_the_distribution_summed_by_hand():
    mu, sd = 8.3, 1.5
    levels = np.arange(1, 11)
    upper = np.append(levels[:-1] + 0.5, np.inf)
    lower = np.insert(levels[1:] - 0.5, 0, -np.inf)
    p = sps.norm.cdf((upper - mu) / sd) - sps.norm.cdf((lower - mu) / sd)
    assert expected_score(mu, sd) == pytest.approx((levels * p).sum())
    assert expected_score(latent_for(8.232, sd), sd) == pytest.approx(8.232)


def test_the_truth_holds_the_requested_effects():
    truth = synthetic_study(n_per_arm=2, seed=1).truth
    assert truth.satisfaction_change["collabllm"] == pytest.approx(0.176)
    assert truth.time_change["collabllm"] == pytest.approx(-0.104)
    assert truth.overall_interaction["base"] == pytest.approx(7.0)
    assert truth.wall_seconds["base"] == pytest.approx(28 * 60)
    assert truth.wall_seconds["collabllm"] / truth.wall_seconds["proactive"] - 1 == pytest.approx(
        0.896 / 1.06 - 1
    )
    assert truth.rating_slope["base"] < 0 < truth.rating_slope["collabllm"]


def test_a_large_draw_matches_the_truth_in_expectation():
    study = synthetic_study(n_per_arm=20_000, seed=8)
    participants, truth = study["participants"], study.truth
    means = participants.groupby("arm")[["overall_interaction", "wall_seconds"]].mean()
    for arm in truth.arms:
        assert means.loc[arm, "overall_interaction"] == pytest.approx(
            truth.overall_interaction[arm], abs=0.03
        )
        assert means.loc[arm, "wall_seconds"] == pytest.approx(truth.wall_seconds[arm], rel=0.01)
    observed = study["turn_ratings"].groupby(["arm", "after_turn"])["score"].mean()
    for (arm, turn), expected in truth.rating_means.items():
        assert observed[(arm, turn)] == pytest.approx(expected, abs=0.03)


def test_the_report_statistics_recover_the_headline_effects(large):
    truth = large.truth
    participants = large["participants"]
    for outcome, true_change, tolerance in (
        ("overall_interaction", truth.satisfaction_change, 0.05),
        ("wall_seconds", truth.time_change, 0.06),
    ):
        result = stats.relative_change(participants, outcome, reference="base", seed=1)
        row = result.set_index("arm").loc["collabllm"]
        assert row.ci_low <= true_change["collabllm"] <= row.ci_high
        assert row.change == pytest.approx(true_change["collabllm"], abs=tolerance)


def test_the_mixed_model_recovers_the_slopes_signs_and_sizes(large):
    model = mixed_model(large["turn_ratings"])
    slopes = model.slopes.set_index("arm")
    assert model.converged
    assert slopes.loc["base", "ci_high"] < 0
    assert slopes.loc["collabllm", "ci_low"] > 0 and slopes.loc["proactive", "ci_low"] > 0
    for arm, slope in large.truth.rating_slope.items():
        assert slopes.loc[arm, "ci_low"] <= slope <= slopes.loc[arm, "ci_high"]


def test_trajectory_intervals_cover_the_expected_ratings(large):
    means = trajectory_means(large["turn_ratings"], seed=3).set_index(["arm", "after_turn"])
    covered = [
        means.loc[key, "ci_low"] <= value <= means.loc[key, "ci_high"]
        for key, value in large.truth.rating_means.items()
    ]
    assert sum(covered) >= len(covered) - 1


def coverage_draws(draws: int, n: int, n_boot: int) -> dict[str, float]:
    hits: dict[str, list[bool]] = {"satisfaction": [], "time": [], "mean": [], "share": [], "g": []}
    for i in range(draws):
        study = synthetic_study(n_per_arm=n, seed=10_000 + i, arms=("base", "collabllm"))
        participants, truth = study["participants"], study.truth
        for key, outcome, true in (
            ("satisfaction", "overall_interaction", truth.satisfaction_change),
            ("time", "wall_seconds", truth.time_change),
        ):
            row = stats.relative_change(
                participants, outcome, reference="base", seed=i, n_boot=n_boot
            ).iloc[0]
            hits[key].append(row.ci_low <= true["collabllm"] <= row.ci_high)
        base = participants.loc[participants["arm"] == "base", "overall_interaction"]
        low, high = stats.bootstrap_ci(base, seed=i, n_boot=n_boot)
        hits["mean"].append(low <= truth.overall_interaction["base"] <= high)
        share = stats.share_at_least(participants, "overall_interaction", 8).set_index("arm")
        true_share = truth.overall_share_at_least("collabllm", 8)
        hits["share"].append(
            share.loc["collabllm", "ci_low"] <= true_share <= share.loc["collabllm", "ci_high"]
        )
    return {key: float(np.mean(values)) for key, values in hits.items() if values}


def test_intervals_cover_the_truth_at_about_the_nominal_rate():
    # 200 studies of 50 per arm: a true 95 % rate gives 0.92-0.98 in 95 % of such runs; the
    # percentile bootstrap runs slightly narrow at this size (about 0.93-0.94 in 1000 draws).
    rates = coverage_draws(draws=200, n=50, n_boot=1000)
    for name, rate in rates.items():
        assert 0.89 <= rate <= 0.99, f"{name}: {rate}"


@pytest.mark.slow
def test_mixed_model_slope_intervals_cover_the_true_slopes_at_about_the_nominal_rate():
    hits = []
    for i in range(150):
        study = synthetic_study(n_per_arm=30, seed=20_000 + i)
        slopes = mixed_model(study["turn_ratings"]).slopes.set_index("arm")
        hits += [
            slopes.loc[arm, "ci_low"] <= slope <= slopes.loc[arm, "ci_high"]
            for arm, slope in study.truth.rating_slope.items()
        ]
    assert 0.90 <= np.mean(hits) <= 0.99
