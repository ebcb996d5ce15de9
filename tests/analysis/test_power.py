"""Power analysis against statsmodels, the noncentral t distribution and Cohen's tables."""

import math

import pytest
from scipy import stats as sps
from statsmodels.stats.power import TTestIndPower

from analysis.power import achieved_power, cohens_d_for_change, detectable_effect, n_per_arm


def noncentral_t_power(d: float, n_a: int, n_b: int, alpha: float = 0.05) -> float:
    df = n_a + n_b - 2
    shift = d * math.sqrt(n_a * n_b / (n_a + n_b))
    critical = sps.t.ppf(1 - alpha / 2, df)
    return float(sps.nct.sf(critical, df, shift) + sps.nct.cdf(-critical, df, shift))


@pytest.mark.parametrize("d,expected", [(0.2, 394), (0.5, 64), (0.8, 26)])
def test_n_per_arm_reproduces_cohens_table_for_80_percent_power(d, expected):
    assert n_per_arm(d) == expected


@pytest.mark.parametrize("d,alpha,power,ratio", [(0.3, 0.05, 0.9, 1.0), (0.5, 0.01, 0.8, 2.0)])
def test_n_per_arm_is_statsmodels_solution_rounded_up(d, alpha, power, ratio):
    solved = TTestIndPower().solve_power(effect_size=d, alpha=alpha, power=power, ratio=ratio)
    assert n_per_arm(d, alpha=alpha, power=power, ratio=ratio) == math.ceil(solved)


@pytest.mark.parametrize("d", [0.2, 0.45, 0.8, -0.5])
def test_n_per_arm_is_the_smallest_n_reaching_the_power(d):
    n = n_per_arm(d)
    assert noncentral_t_power(abs(d), n, n) >= 0.8 > noncentral_t_power(abs(d), n - 1, n - 1)


@pytest.mark.parametrize("d,n_a,n_b", [(0.5, 64, 64), (0.3, 67, 70), (0.8, 10, 25)])
def test_achieved_power_matches_the_noncentral_t_distribution(d, n_a, n_b):
    assert achieved_power(d, n_a, n_b) == pytest.approx(noncentral_t_power(d, n_a, n_b), abs=1e-6)


def test_the_detectable_effect_has_the_requested_power():
    d = detectable_effect(67, 67)
    assert noncentral_t_power(d, 67, 67) == pytest.approx(0.8, abs=1e-4)


def test_a_relative_change_converts_to_cohens_d():
    assert cohens_d_for_change(0.176, 7.0, 1.6) == pytest.approx(0.77)


def test_a_very_large_effect_needs_the_minimum_of_two_per_arm():
    # statsmodels' root finder gives up (NaN) here; the integer search does not.
    assert n_per_arm(10.0) == 2


@pytest.mark.parametrize("d", [0.0, float("nan")])
def test_a_zero_or_missing_effect_is_refused(d):
    with pytest.raises(ValueError):
        n_per_arm(d)


def test_achieved_power_needs_two_per_arm():
    assert math.isnan(achieved_power(0.5, 1, 10))


def test_achieved_power_stays_a_number_where_statsmodels_gives_nan():
    # statsmodels' TTestIndPower.power returns NaN here (power within rounding of 1).
    assert achieved_power(0.9147, 284, 289) == pytest.approx(1.0)
    expected = TTestIndPower().solve_power(effect_size=0.9147, alpha=0.05, power=0.8)
    assert n_per_arm(0.9147) == math.ceil(expected)  # 19.77 -> 20


@pytest.mark.parametrize(("d", "n_a", "n_b"), [(0.2, 50, 50), (0.5, 64, 64), (0.3, 40, 90)])
def test_achieved_power_matches_statsmodels_where_it_is_finite(d, n_a, n_b):
    expected = TTestIndPower().power(effect_size=d, nobs1=n_a, alpha=0.05, ratio=n_b / n_a)
    assert achieved_power(d, n_a, n_b) == pytest.approx(expected, abs=1e-9)
