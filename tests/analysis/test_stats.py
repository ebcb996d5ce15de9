"""analysis.stats against independent references: scipy, statsmodels and small cases worked by
hand in the test."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from analysis import stats

Z95 = 1.959963984540054


def frame(groups: dict[str, list[float]], outcome: str = "y") -> pd.DataFrame:
    rows = [(arm, v) for arm, values in groups.items() for v in values]
    return pd.DataFrame(rows, columns=["arm", outcome])


@pytest.fixture
def three_arms() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return frame(
        {
            "base": list(rng.normal(7.0, 1.5, 40)),
            "collabllm": list(rng.normal(8.2, 1.2, 35)),
            "proactive": list(rng.normal(7.3, 1.8, 30)),
        }
    )


def test_the_bootstrap_interval_of_a_constant_sample_is_that_constant():
    assert stats.bootstrap_ci([4.0] * 12, seed=1) == (4.0, 4.0)


def test_the_bootstrap_interval_needs_two_values():
    assert all(math.isnan(v) for v in stats.bootstrap_ci([3.0, np.nan], seed=1))


def test_the_bootstrap_interval_ignores_missing_values():
    values = [1.0, 5.0, 2.0, 8.0, 3.0]
    with_gaps = pd.Series([1.0, None, 5.0, 2.0, np.nan, 8.0, 3.0], dtype="Float64")
    assert stats.bootstrap_ci(with_gaps, seed=3) == stats.bootstrap_ci(values, seed=3)


def test_the_bootstrap_interval_agrees_with_scipys_percentile_bootstrap():
    x = np.random.default_rng(0).gamma(2.0, 2.0, 300)
    ours = stats.bootstrap_ci(x, seed=1, n_boot=4000)
    ref = sps.bootstrap((x,), np.mean, method="percentile", n_resamples=4000, rng=2)
    # Different random streams: the endpoints agree to Monte Carlo error (a few % of the SE).
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert ours[0] == pytest.approx(ref.confidence_interval.low, abs=0.1 * se)
    assert ours[1] == pytest.approx(ref.confidence_interval.high, abs=0.1 * se)


def test_the_bootstrap_takes_any_statistic_with_or_without_an_axis_argument():
    x = np.random.default_rng(1).normal(size=50)
    with_axis = stats.bootstrap_ci(x, np.median, seed=4, n_boot=300)
    without_axis = stats.bootstrap_ci(x, lambda s: float(np.median(s)), seed=4, n_boot=300)
    assert with_axis == pytest.approx(without_axis)


def test_describe_matches_pandas_summaries_per_arm(three_arms):
    data = three_arms.copy()
    data.loc[[0, 5, 50], "y"] = np.nan
    result = stats.describe(data, "y", seed=1).set_index("arm")
    expected = data.dropna().groupby("arm")["y"].agg(["count", "mean", "std", "median"])
    assert list(result.index) == ["base", "collabllm", "proactive"]
    assert result["n"].tolist() == expected["count"].tolist()
    np.testing.assert_allclose(result["mean"], expected["mean"])
    np.testing.assert_allclose(result["sd"], expected["std"])
    np.testing.assert_allclose(result["median"], expected["median"])
    assert (result["ci_low"] < result["mean"]).all() and (result["mean"] < result["ci_high"]).all()


def test_describe_is_reproducible_from_its_seed(three_arms):
    first = stats.describe(three_arms, "y", seed=5)
    pd.testing.assert_frame_equal(first, stats.describe(three_arms, "y", seed=5))
    assert not first.equals(stats.describe(three_arms, "y", seed=6))


def test_by_group_describes_each_document_type_and_arm(three_arms):
    data = three_arms.assign(task_type=np.where(np.arange(len(three_arms)) % 2, "blog", "essay"))
    result = stats.by_group(data, "y", seed=1)
    assert list(result.columns[:2]) == ["task_type", "arm"]
    assert len(result) == 6
    row = result[(result.task_type == "blog") & (result.arm == "base")].iloc[0]
    subset = data[(data.task_type == "blog") & (data.arm == "base")]["y"]
    assert row["n"] == subset.size and row["mean"] == pytest.approx(subset.mean())


def test_omnibus_matches_scipys_kruskal_and_one_way_anova(three_arms):
    result = stats.omnibus(three_arms, "y")
    groups = [g["y"].to_numpy() for _, g in three_arms.groupby("arm")]
    h, f = sps.kruskal(*groups), sps.f_oneway(*groups)
    assert (result.kruskal_h, result.kruskal_p) == pytest.approx((h.statistic, h.pvalue))
    assert (result.anova_f, result.anova_p) == pytest.approx((f.statistic, f.pvalue))
    assert (result.df_between, result.df_within, result.n_groups) == (2, 102, 3)


def test_omnibus_is_undefined_for_a_single_arm_or_identical_values():
    one_arm = stats.omnibus(frame({"base": [1.0, 2.0, 3.0]}), "y")
    assert math.isnan(one_arm.kruskal_p) and math.isnan(one_arm.anova_p)
    identical = stats.omnibus(frame({"a": [5.0, 5.0], "b": [5.0, 5.0]}), "y")
    assert math.isnan(identical.kruskal_h) and math.isnan(identical.anova_f)


def test_holm_matches_statsmodels():
    p = [0.01, 0.04, 0.03, 0.005, 0.5, 0.04]
    assert stats.holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))


def test_holm_on_a_small_case_worked_by_hand():
    # Sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06.
    assert stats.holm([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0]


def test_holm_leaves_missing_pvalues_out_of_the_family():
    adjusted = stats.holm([0.01, float("nan"), 0.04])
    assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.04)
    assert math.isnan(adjusted[1])


def test_hedges_g_on_five_versus_five_worked_by_hand():
    a, b = [4, 5, 6, 7, 8], [1, 2, 3, 4, 5]
    # Means 6 and 3, both variances 2.5, so the pooled SD is sqrt(2.5) and d = 3 / sqrt(2.5).
    d = 3 / math.sqrt(2.5)
    j = 1 - 3 / (4 * 10 - 9)  # = 28/31
    g = j * d
    var_g = j**2 * (10 / 25 + d**2 / (2 * 10))  # = J^2 (0.4 + 3.6 / 20)
    expected = (g, g - Z95 * math.sqrt(var_g), g + Z95 * math.sqrt(var_g))
    assert stats.hedges_g(a, b) == pytest.approx(expected)
    assert expected == pytest.approx((1.713751, 0.365538, 3.061964), abs=1e-6)


def test_hedges_g_is_undefined_without_spread_or_with_one_value():
    assert math.isnan(stats.hedges_g([1, 1, 1], [1, 1])[0])
    assert math.isnan(stats.hedges_g([1], [1, 2, 3])[0])


def test_cliffs_delta_on_tiny_samples_counted_by_hand():
    # a=1 is below 2, 2, 4; a=2 ties 2, 2 and is below 4; a=3 beats 2, 2 and is below 4.
    # Greater 2, less 5, ties 2 of 9 pairs: delta = (2 - 5) / 9.
    delta, low, high = stats.cliffs_delta([1, 2, 3], [2, 2, 4], seed=1)
    assert delta == pytest.approx(-3 / 9)
    assert low <= delta <= high
    assert stats.cliffs_delta([5, 6], [1, 2, 3], seed=1)[0] == 1.0


def test_cliffs_delta_equals_direct_pair_counting_with_many_ties():
    rng = np.random.default_rng(3)
    a, b = rng.integers(1, 11, 200), rng.integers(1, 11, 150)
    direct = np.sign(a[:, None] - b[None, :]).mean()
    assert stats.cliffs_delta(a, b, seed=1)[0] == pytest.approx(direct)


def test_cliffs_delta_bootstrap_interval_agrees_with_a_naive_pair_counting_bootstrap():
    rng = np.random.default_rng(4)
    a, b = rng.integers(1, 11, 60), rng.integers(2, 11, 50)
    _, low, high = stats.cliffs_delta(a, b, seed=9, n_boot=4000)
    naive = [
        np.sign(rng.choice(a, a.size)[:, None] - rng.choice(b, b.size)[None, :]).mean()
        for _ in range(4000)
    ]
    ref_low, ref_high = np.percentile(naive, [2.5, 97.5])
    assert (low, high) == pytest.approx((ref_low, ref_high), abs=0.03)


def test_cliffs_variance_interval_matches_cliffs_formula_written_out():
    rng = np.random.default_rng(5)
    a, b = rng.integers(1, 11, 25).astype(float), rng.integers(2, 11, 20).astype(float)
    n, m = a.size, b.size
    dij = np.sign(a[:, None] - b[None, :])
    d = dij.mean()
    s2 = (
        m**2 * ((dij.mean(axis=1) - d) ** 2).sum()
        + n**2 * ((dij.mean(axis=0) - d) ** 2).sum()
        - ((dij - d) ** 2).sum()
    ) / (n * m * (n - 1) * (m - 1))
    root = Z95 * math.sqrt(s2) * math.sqrt((1 - d**2) ** 2 + Z95**2 * s2)
    expected = (
        (d - d**3 - root) / (1 - d**2 + Z95**2 * s2),
        (d - d**3 + root) / (1 - d**2 + Z95**2 * s2),
    )
    result = stats.cliffs_delta(a, b, seed=0, method="cliff")
    assert result == pytest.approx((d, *expected))


def test_pairwise_matches_scipys_welch_and_mann_whitney_tests(three_arms):
    result = stats.pairwise(three_arms, "y", seed=1)
    assert list(result.columns) == stats.PAIRWISE_COLUMNS
    assert list(zip(result.arm_a, result.arm_b, strict=True)) == [
        ("base", "collabllm"),
        ("base", "proactive"),
        ("collabllm", "proactive"),
    ]
    for row in result.itertuples():
        a = three_arms.loc[three_arms.arm == row.arm_a, "y"].to_numpy()
        b = three_arms.loc[three_arms.arm == row.arm_b, "y"].to_numpy()
        t = sps.ttest_ind(a, b, equal_var=False)
        u = sps.mannwhitneyu(a, b, alternative="two-sided")
        assert (row.welch_t, row.welch_df, row.welch_p) == pytest.approx(
            (t.statistic, t.df, t.pvalue)
        )
        assert (row.mwu_u, row.mwu_p) == pytest.approx((u.statistic, u.pvalue))
        assert (row.n_a, row.n_b, row.mean_a) == (a.size, b.size, pytest.approx(a.mean()))
        assert row.hedges_g == pytest.approx(stats.hedges_g(a, b)[0])
        assert row.cliffs_delta == pytest.approx(np.sign(a[:, None] - b[None, :]).mean())


def test_pairwise_holm_adjusts_within_the_outcomes_family(three_arms):
    result = stats.pairwise(three_arms, "y", seed=1)
    for raw, adjusted in (("welch_p", "welch_p_holm"), ("mwu_p", "mwu_p_holm")):
        expected = multipletests(result[raw], method="holm")[1]
        np.testing.assert_allclose(result[adjusted], expected)


def test_pairwise_follows_a_given_arm_order(three_arms):
    result = stats.pairwise(three_arms, "y", seed=1, order=["proactive", "base"])
    assert (result.arm_a.tolist(), result.arm_b.tolist()) == (["proactive"], ["base"])


def test_mann_whitney_u_counts_pairs_won_by_the_first_arm():
    result = stats.pairwise(frame({"a": [1, 2, 3], "b": [2, 2, 4]}), "y", seed=1)
    assert result.loc[0, "mwu_u"] == 3.0  # 2 wins and 2 ties (counted half) out of 9 pairs


def test_relative_change_on_a_case_worked_by_hand():
    # The arm is constant at 6; the reference [4, 6] resamples to means 4, 5, 6 with
    # probabilities 1/4, 1/2, 1/4, so the change resamples to 0.5, 0.2, 0: the 95 % percentile
    # interval runs from 0 to 0.5 around the estimate 6 / 5 - 1 = 0.2.
    data = frame({"base": [4.0, 6.0], "collabllm": [6.0, 6.0]})
    result = stats.relative_change(data, "y", reference="base", seed=1)
    row = result.iloc[0]
    assert (row.arm, row.reference, row["mean"], row.reference_mean) == ("collabllm", "base", 6, 5)
    assert row.change == pytest.approx(0.2)
    assert (row.ci_low, row.ci_high) == pytest.approx((0.0, 0.5))


def test_relative_change_has_one_row_per_other_arm(three_arms):
    result = stats.relative_change(three_arms, "y", reference="base", seed=2)
    means = three_arms.groupby("arm")["y"].mean()
    assert result.arm.tolist() == ["collabllm", "proactive"]
    np.testing.assert_allclose(result.change, means[result.arm].to_numpy() / means["base"] - 1)
    assert (result.ci_low < result.change).all() and (result.change < result.ci_high).all()


@pytest.mark.parametrize("k,n", [(0, 10), (1, 10), (7, 20), (20, 20), (37, 201), (1, 1)])
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_wilson_interval_matches_statsmodels(k, n, level):
    expected = proportion_confint(k, n, alpha=1 - level, method="wilson")
    assert stats.wilson_interval(k, n, level) == pytest.approx(expected, abs=1e-12)


def test_wilson_interval_for_no_successes_worked_by_hand():
    assert stats.wilson_interval(0, 10) == pytest.approx((0.0, Z95**2 / (10 + Z95**2)))
    assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))


def test_share_at_least_counts_non_missing_values_at_or_above_the_threshold():
    data = frame({"base": [7, 8, 9, 10, np.nan], "collabllm": [9, 9, 6]})
    result = stats.share_at_least(data, "y", 8).set_index("arm")
    assert result.loc["base", ["n", "k"]].tolist() == [4, 3]
    assert result.loc["collabllm", ["n", "k"]].tolist() == [3, 2]
    assert result.loc["base", "share"] == 0.75
    ci = tuple(result.loc["base", ["ci_low", "ci_high"]])
    assert ci == pytest.approx(proportion_confint(3, 4, method="wilson"))


def participants_with_flags() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "participant_id": ["p1", "p2", "p3", "p4", "p5", "p6"],
            "arm": ["base", "base", "base", "collabllm", "collabllm", "proactive"],
            "excluded": pd.array([True, False, True, True, None, False], dtype="boolean"),
            "exclusion_reason": ["attention", "", "", "attention", "", ""],
            "attention_failures": [1, 3, 0, 1, 0, 2],
        }
    )


def test_apply_exclusions_keeps_exactly_the_rows_not_flagged_excluded():
    kept, _ = stats.apply_exclusions(participants_with_flags())
    # p2 and p6 failed attention checks but were not excluded: only the recorded flag decides;
    # a missing flag (p5) keeps the row.
    assert kept.participant_id.tolist() == ["p2", "p5", "p6"]


def test_apply_exclusions_reports_reasons_and_a_total_per_arm():
    _, summary = stats.apply_exclusions(participants_with_flags())
    assert summary.values.tolist() == [
        ["base", "attention", 1],
        ["base", "unspecified", 1],
        ["base", "total", 2],
        ["collabllm", "attention", 1],
        ["collabllm", "total", 1],
        ["proactive", "total", 0],
    ]


def test_apply_exclusions_reads_flags_written_as_text():
    data = participants_with_flags().assign(excluded=["True", "false", "1", "no", "", "0"])
    kept, _ = stats.apply_exclusions(data)
    assert kept.participant_id.tolist() == ["p2", "p4", "p5", "p6"]


def test_pairwise_puts_the_reference_second_so_effects_read_arm_minus_reference(three_arms):
    result = stats.pairwise(three_arms, "y", seed=1, reference="base")
    assert list(zip(result.arm_a, result.arm_b, strict=True)) == [
        ("collabllm", "base"),
        ("proactive", "base"),
        ("collabllm", "proactive"),
    ]
    for row in result.itertuples():
        a = three_arms.loc[three_arms.arm == row.arm_a, "y"].to_numpy()
        b = three_arms.loc[three_arms.arm == row.arm_b, "y"].to_numpy()
        interval = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
        assert row.difference == pytest.approx(a.mean() - b.mean())
        assert (row.diff_ci_low, row.diff_ci_high) == pytest.approx(tuple(interval))
        assert np.sign(row.hedges_g) == np.sign(row.difference) == np.sign(row.welch_t)


def test_with_the_reference_first_its_comparisons_come_first(three_arms):
    order = stats.reference_first(["base", "collabllm", "proactive"], "proactive")
    assert order == ["proactive", "base", "collabllm"]
    result = stats.pairwise(three_arms, "y", seed=1, order=order, reference="proactive")
    assert list(zip(result.arm_a, result.arm_b, strict=True)) == [
        ("base", "proactive"),
        ("collabllm", "proactive"),
        ("base", "collabllm"),
    ]
