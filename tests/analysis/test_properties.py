"""Invariants of the statistics over generated inputs (hypothesis)."""

import math

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import stats

SETTINGS = settings(max_examples=50, deadline=None)
finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
samples = st.lists(finite, min_size=2, max_size=30)
scores = st.lists(st.integers(min_value=1, max_value=10), min_size=1, max_size=40)
pvalues = st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=20)


@SETTINGS
@given(pvalues)
def test_holm_never_lowers_a_pvalue_and_keeps_the_rank_order(p):
    adjusted = stats.holm(p)
    assert all(raw <= adj <= 1 for raw, adj in zip(p, adjusted, strict=True))
    order = np.argsort(p, kind="stable")
    ranked = np.asarray(adjusted)[order]
    assert (np.diff(ranked) >= 0).all()


@SETTINGS
@given(scores, scores)
def test_cliffs_delta_is_antisymmetric_and_bounded(a, b):
    forward = stats.cliffs_delta(a, b, seed=1, n_boot=50)
    backward = stats.cliffs_delta(b, a, seed=1, n_boot=50)
    assert -1 <= forward[0] <= 1
    assert math.isclose(forward[0], -backward[0], abs_tol=1e-12)
    assert math.isclose(forward[0], np.sign(np.subtract.outer(a, b)).mean(), abs_tol=1e-12)


@SETTINGS
@given(samples, samples)
def test_hedges_g_changes_sign_when_the_groups_swap(a, b):
    forward, backward = stats.hedges_g(a, b), stats.hedges_g(b, a)
    if math.isnan(forward[0]):
        assert math.isnan(backward[0])
        return
    assert math.isclose(forward[0], -backward[0], rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(forward[1], -backward[2], rel_tol=1e-9, abs_tol=1e-9)
    assert forward[1] <= forward[0] <= forward[2]


@SETTINGS
@given(
    st.integers(min_value=1, max_value=10_000).flatmap(
        lambda n: st.tuples(st.integers(min_value=0, max_value=n), st.just(n))
    ),
    st.sampled_from([0.8, 0.9, 0.95, 0.99]),
)
def test_the_wilson_interval_contains_the_share_and_stays_in_0_1(kn, level):
    k, n = kn
    low, high = stats.wilson_interval(k, n, level)
    assert 0 <= low <= k / n <= high <= 1


@SETTINGS
@given(st.lists(st.integers(min_value=-50, max_value=50), min_size=3, max_size=40))
def test_the_bootstrap_interval_contains_the_sample_mean(values):
    if len(set(values)) < 2:
        return
    low, high = stats.bootstrap_ci(values, seed=7, n_boot=500)
    assert low <= np.mean(values) <= high


@SETTINGS
@given(
    st.lists(
        st.tuples(st.sampled_from(["base", "collabllm"]), st.one_of(st.none(), finite)),
        min_size=1,
        max_size=40,
    )
)
def test_describe_counts_the_non_missing_values_of_each_arm(rows):
    data = pd.DataFrame(rows, columns=["arm", "y"]).astype({"y": float})
    result = stats.describe(data, "y", seed=1, n_boot=50).set_index("arm")
    expected = data.dropna().groupby("arm").size()
    assert result["n"].to_dict() == expected.to_dict()
