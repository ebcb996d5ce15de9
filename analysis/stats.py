"""Per-arm statistics of exported study tables: descriptives with bootstrap intervals, omnibus and
pairwise tests with Holm correction, effect sizes, relative change, shares and exclusions.

Every function takes DataFrames with the schema's column names and returns a DataFrame or a small
dataclass; randomness comes only from the `seed` passed in. Missing outcome values are dropped.
"""

import itertools
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

# Bootstrap resamples are drawn in blocks of about this many cells, which bounds memory on large
# studies (10 000 participants x 2 000 resamples would be 160 MB in one go) at no cost in speed.
_BLOCK_CELLS = 1 << 22
DESCRIBE_COLUMNS = ["n", "mean", "sd", "median", "ci_low", "ci_high"]


def sub_seed(seed: int, *labels: object) -> int:
    """A seed for one labelled part of an analysis (an arm, a pair), stable across runs."""
    keys = [seed, *(zlib.crc32(str(label).encode()) for label in labels)]
    return int(np.random.SeedSequence(keys).generate_state(1, dtype=np.uint32)[0])


def numeric(values: Any) -> np.ndarray:
    """Values as a float array with missing (or non-numeric) entries dropped."""
    if not isinstance(values, pd.Series):
        values = np.asarray(values)
        if values.dtype.kind in "biuf":
            array = values.astype(float).ravel()
            return array[~np.isnan(array)]
        values = pd.Series(values.ravel(), dtype=object)
    array = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return array[~np.isnan(array)]


def _apply(statistic: Callable[..., Any], samples: np.ndarray) -> np.ndarray:
    try:
        result = np.asarray(statistic(samples, axis=1), dtype=float)
        if result.shape == (samples.shape[0],):
            return result
    except TypeError:
        pass
    return np.array([statistic(row) for row in samples], dtype=float)


def bootstrap_distribution(
    values: np.ndarray,
    statistic: Callable[..., Any],
    rng: np.random.Generator,
    n_boot: int,
) -> np.ndarray:
    """`n_boot` values of `statistic` over resamples (with replacement) of `values`."""
    n = values.size
    out = np.empty(n_boot)
    block = max(1, _BLOCK_CELLS // max(n, 1))
    for start in range(0, n_boot, block):
        size = min(block, n_boot - start)
        indices = rng.integers(0, n, (size, n), dtype=np.int32)
        out[start : start + size] = _apply(statistic, values[indices])
    return out


def percentile_interval(distribution: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` percentile interval of the finite values of a bootstrap distribution."""
    finite = distribution[np.isfinite(distribution)]
    if finite.size == 0:
        return (np.nan, np.nan)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return (float(low), float(high))


def bootstrap_ci(
    values: Any,
    statistic: Callable[..., Any] = np.mean,
    *,
    seed: int,
    n_boot: int = 2000,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic`; NaNs dropped; (nan, nan) below two values."""
    x = numeric(values)
    if x.size < 2:
        return (np.nan, np.nan)
    rng = np.random.default_rng(seed)
    return percentile_interval(bootstrap_distribution(x, statistic, rng, n_boot), level)


def _summary(x: np.ndarray, seed: int, n_boot: int, level: float) -> dict[str, float]:
    low, high = bootstrap_ci(x, seed=seed, n_boot=n_boot, level=level)
    return {
        "n": x.size,
        "mean": float(x.mean()) if x.size else np.nan,
        "sd": float(x.std(ddof=1)) if x.size > 1 else np.nan,
        "median": float(np.median(x)) if x.size else np.nan,
        "ci_low": low,
        "ci_high": high,
    }


def _describe(
    df: pd.DataFrame, outcome: str, keys: list[str], seed: int, n_boot: int, level: float
) -> pd.DataFrame:
    rows = []
    for key, group in df.groupby(keys, sort=True, observed=True):
        x = numeric(group[outcome])
        if x.size == 0:
            continue
        labels = key if isinstance(key, tuple) else (key,)
        summary = _summary(x, sub_seed(seed, outcome, *labels), n_boot, level)
        rows.append({**dict(zip(keys, labels, strict=True)), **summary})
    result = pd.DataFrame(rows, columns=[*keys, *DESCRIBE_COLUMNS])
    return result.astype({"n": "int64"})


def describe(
    df: pd.DataFrame,
    outcome: str,
    *,
    by: str = "arm",
    seed: int,
    n_boot: int = 2000,
    level: float = 0.95,
) -> pd.DataFrame:
    """N, mean, SD, median and bootstrap CI of the mean of `outcome` per `by` group."""
    return _describe(df, outcome, [by], seed, n_boot, level)


def by_group(
    df: pd.DataFrame,
    outcome: str,
    *,
    group: str = "task_type",
    by: str = "arm",
    seed: int,
    n_boot: int = 2000,
    level: float = 0.95,
) -> pd.DataFrame:
    """`describe` per (group, arm), e.g. per document type."""
    return _describe(df, outcome, [group, by], seed, n_boot, level)


def _groups(df: pd.DataFrame, outcome: str, by: str) -> dict[str, np.ndarray]:
    found = {str(k): numeric(g[outcome]) for k, g in df.groupby(by, sort=True, observed=True)}
    return {k: v for k, v in found.items() if v.size}


@dataclass
class Omnibus:
    outcome: str
    kruskal_h: float
    kruskal_p: float
    anova_f: float
    anova_p: float
    df_between: int
    df_within: int
    n_groups: int


def _quiet(test: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, float]:
    """(statistic, p) of a scipy test, or NaNs where the data make it undefined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = test(*args, **kwargs)
        except (ValueError, ZeroDivisionError, FloatingPointError):
            return (np.nan, np.nan)
    return (float(result.statistic), float(result.pvalue))


def omnibus(df: pd.DataFrame, outcome: str, *, by: str = "arm") -> Omnibus:
    """Kruskal-Wallis H and one-way ANOVA F across the groups of `by`."""
    groups = list(_groups(df, outcome, by).values())
    k, n = len(groups), sum(g.size for g in groups)
    h = f = (np.nan, np.nan)
    if k >= 2:
        h = _quiet(sps.kruskal, *groups)
        f = _quiet(sps.f_oneway, *groups) if n > k else (np.nan, np.nan)
    return Omnibus(outcome, h[0], h[1], f[0], f[1], k - 1, n - k, k)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (monotone in rank order, capped at 1; NaNs kept apart)."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    present = np.flatnonzero(~np.isnan(p))
    order = present[np.argsort(p[present], kind="stable")]
    m = order.size
    scaled = (m - np.arange(m)) * p[order]
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return [float(v) for v in adjusted]


def welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Welch's unequal-variance t test: (t, Welch-Satterthwaite df, two-sided p)."""
    if a.size < 2 or b.size < 2:
        return (np.nan, np.nan, np.nan)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    if va + vb == 0:
        return (np.nan, np.nan, np.nan)
    t = (a.mean() - b.mean()) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    return (float(t), float(df), float(2 * sps.t.sf(abs(t), df)))


def hedges_g(a: Any, b: Any, *, level: float = 0.95) -> tuple[float, float, float]:
    """Hedges' g of mean(a) - mean(b) with a normal-approximation CI: (g, ci_low, ci_high).

    g = J * d with J = 1 - 3 / (4 (n_a + n_b) - 9); Var(g) = J^2 [(n_a + n_b) / (n_a n_b)
    + d^2 / (2 (n_a + n_b))] (Hedges & Olkin 1985, as in Borenstein et al. 2009, ch. 4).
    """
    x, y = numeric(a), numeric(b)
    na, nb = x.size, y.size
    if na < 2 or nb < 2:
        return (np.nan, np.nan, np.nan)
    pooled = np.sqrt(((na - 1) * x.var(ddof=1) + (nb - 1) * y.var(ddof=1)) / (na + nb - 2))
    if pooled == 0:
        return (np.nan, np.nan, np.nan)
    d = (x.mean() - y.mean()) / pooled
    j = 1 - 3 / (4 * (na + nb) - 9)
    se = j * np.sqrt((na + nb) / (na * nb) + d**2 / (2 * (na + nb)))
    z = sps.norm.ppf(0.5 + level / 2)
    g = j * d
    return (float(g), float(g - z * se), float(g + z * se))


def _block_counts(
    rng: np.random.Generator, counts: np.ndarray, inverse: np.ndarray, rows: int
) -> np.ndarray:
    """How often each distinct value is drawn, per row of `rows` resamples of all n values."""
    n, k = inverse.size, counts.size
    if 10 * k < n:  # heavily tied (ratings 1-10): k binomial draws beat n index draws
        return rng.multinomial(n, counts / n, size=rows)
    flat = inverse[rng.integers(0, n, (rows, n), dtype=np.int32)] + (np.arange(rows) * k)[:, None]
    return np.bincount(flat.ravel(), minlength=rows * k).reshape(rows, k)


def _cliff_bootstrap(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, n_boot: int
) -> np.ndarray:
    # A resample is a pair of count vectors over the distinct values; how many resampled b lie
    # below (above) a value of a is a cumulative count at a fixed position of the distinct b,
    # so each resample costs O(distinct values), not O(n * m).
    xa, inverse_a, counts_a = np.unique(x, return_inverse=True, return_counts=True)
    xb, inverse_b, counts_b = np.unique(y, return_inverse=True, return_counts=True)
    lo, hi = np.searchsorted(xb, xa, "left"), np.searchsorted(xb, xa, "right")
    n, m = x.size, y.size
    out = np.empty(n_boot)
    block = max(1, _BLOCK_CELLS // (n + m))
    for start in range(0, n_boot, block):
        rows = min(block, n_boot - start)
        wa = _block_counts(rng, counts_a, inverse_a, rows)
        cum = np.zeros((rows, xb.size + 1))
        np.cumsum(_block_counts(rng, counts_b, inverse_b, rows), axis=1, out=cum[:, 1:])
        out[start : start + rows] = (wa * (cum[:, lo] - (m - cum[:, hi]))).sum(axis=1) / (n * m)
    return out


def _cliff_interval(
    x: np.ndarray, y_sorted: np.ndarray, lo: np.ndarray, hi: np.ndarray, delta: float, z: float
) -> tuple[float, float]:
    # Cliff (1993) consistent variance and his asymmetric interval (also Long et al. 2003).
    n, m = x.size, y_sorted.size
    if n < 2 or m < 2:
        return (np.nan, np.nan)
    x_sorted = np.sort(x)
    d_row = (lo - (m - hi)) / m
    d_col = (
        (n - np.searchsorted(x_sorted, y_sorted, "right"))
        - np.searchsorted(x_sorted, y_sorted, "left")
    ) / n
    cells = (n * m - (hi - lo).sum()) - n * m * delta**2
    var = (m**2 * ((d_row - delta) ** 2).sum() + n**2 * ((d_col - delta) ** 2).sum() - cells) / (
        n * m * (n - 1) * (m - 1)
    )
    var = max(var, (1 - delta**2) / (n * m - 1))
    s = np.sqrt(var)
    root = z * s * np.sqrt((1 - delta**2) ** 2 + z**2 * var)
    denominator = 1 - delta**2 + z**2 * var
    low, high = (delta - delta**3 - root) / denominator, (delta - delta**3 + root) / denominator
    return (float(max(low, -1.0)), float(min(high, 1.0)))


def cliffs_delta(
    a: Any,
    b: Any,
    *,
    seed: int,
    n_boot: int = 2000,
    level: float = 0.95,
    method: str = "bootstrap",
) -> tuple[float, float, float]:
    """Cliff's delta P(a > b) - P(a < b) with a CI: (delta, ci_low, ci_high).

    Counts come from sorted positions (O((n + m) log m)). The CI is the percentile bootstrap
    (each group resampled independently) or, with method="cliff", Cliff's (1993) variance-based
    asymmetric interval.
    """
    x, y = numeric(a), numeric(b)
    if x.size == 0 or y.size == 0:
        return (np.nan, np.nan, np.nan)
    y_sorted = np.sort(y)
    lo, hi = np.searchsorted(y_sorted, x, "left"), np.searchsorted(y_sorted, x, "right")
    delta = float((lo.sum() - (y.size - hi).sum()) / (x.size * y.size))
    if method == "cliff":
        z = float(sps.norm.ppf(0.5 + level / 2))
        return (delta, *_cliff_interval(x, y_sorted, lo, hi, delta, z))
    if method != "bootstrap":
        raise ValueError(f"method must be 'bootstrap' or 'cliff', not {method!r}")
    if x.size < 2 or y.size < 2:
        return (delta, np.nan, np.nan)
    rng = np.random.default_rng(seed)
    distribution = _cliff_bootstrap(x, y, rng, n_boot)
    return (delta, *percentile_interval(distribution, level))


def welch_difference(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, ...]:
    """mean(a) - mean(b) with the Welch t interval: (difference, ci_low, ci_high)."""
    difference = float(a.mean() - b.mean()) if a.size and b.size else np.nan
    if a.size < 2 or b.size < 2:
        return (difference, np.nan, np.nan)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    if va + vb == 0:
        return (difference, difference, difference)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = float(sps.t.ppf(0.5 + level / 2, df) * np.sqrt(va + vb))
    return (difference, difference - half, difference + half)


def _pair_row(
    name_a: str, a: np.ndarray, name_b: str, b: np.ndarray, seed: int, n_boot: int
) -> dict[str, Any]:
    t, df, p = welch(a, b)
    difference = welch_difference(a, b)
    u, u_p = _quiet(sps.mannwhitneyu, a, b, alternative="two-sided")
    g = hedges_g(a, b)
    delta = cliffs_delta(a, b, seed=sub_seed(seed, name_a, name_b), n_boot=n_boot)
    return {
        "arm_a": name_a,
        "arm_b": name_b,
        "n_a": a.size,
        "n_b": b.size,
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "difference": difference[0],
        "diff_ci_low": difference[1],
        "diff_ci_high": difference[2],
        "welch_t": t,
        "welch_df": df,
        "welch_p": p,
        "mwu_u": u,
        "mwu_p": u_p,
        "hedges_g": g[0],
        "g_ci_low": g[1],
        "g_ci_high": g[2],
        "cliffs_delta": delta[0],
        "delta_ci_low": delta[1],
        "delta_ci_high": delta[2],
    }


PAIRWISE_COLUMNS = [
    "arm_a", "arm_b", "n_a", "n_b", "mean_a", "mean_b", "difference", "diff_ci_low",
    "diff_ci_high", "welch_t", "welch_df", "welch_p",
    "welch_p_holm", "mwu_u", "mwu_p", "mwu_p_holm", "hedges_g", "g_ci_low", "g_ci_high",
    "cliffs_delta", "delta_ci_low", "delta_ci_high",
]  # fmt: skip


def reference_first(arms: Sequence[str], reference: str) -> list[str]:
    """The arms with the reference first, so that pairwise lists its comparisons first."""
    return [reference, *(a for a in arms if a != reference)] if reference in arms else list(arms)


def _oriented(names: list[str], reference: str | None) -> list[tuple[str, str]]:
    pairs = []
    for a, b in itertools.combinations(names, 2):
        pairs.append((b, a) if a == reference else (a, b))
    return pairs


def pairwise(
    df: pd.DataFrame,
    outcome: str,
    *,
    by: str = "arm",
    seed: int,
    n_boot: int = 2000,
    order: Sequence[str] | None = None,
    reference: str | None = None,
) -> pd.DataFrame:
    """Welch t, Mann-Whitney U (Holm-adjusted within this outcome), the difference of means with
    a Welch CI, Hedges' g and Cliff's delta for every pair of groups (in `order`, default sorted).

    Every effect reads a versus b: a pair with the `reference` has the reference as b (arm minus
    reference, like relative_change); in other pairs a is the earlier group of `order`.
    """
    groups = _groups(df, outcome, by)
    names = [str(o) for o in order if str(o) in groups] if order is not None else list(groups)
    rows = [
        _pair_row(a, groups[a], b, groups[b], sub_seed(seed, outcome), n_boot)
        for a, b in _oriented(names, reference)
    ]
    result = pd.DataFrame(rows, columns=[c for c in PAIRWISE_COLUMNS if not c.endswith("_holm")])
    for raw in ("welch_p", "mwu_p"):
        result.insert(
            PAIRWISE_COLUMNS.index(f"{raw}_holm"), f"{raw}_holm", holm(result[raw].tolist())
        )
    return result


def relative_change(
    df: pd.DataFrame,
    outcome: str,
    *,
    reference: str,
    by: str = "arm",
    seed: int,
    n_boot: int = 2000,
    level: float = 0.95,
) -> pd.DataFrame:
    """mean(arm) / mean(reference) - 1 per other arm, with a percentile bootstrap CI that
    resamples each arm and the reference independently."""
    groups = _groups(df, outcome, by)
    columns = ["arm", "reference", "mean", "reference_mean", "change", "ci_low", "ci_high"]
    if reference not in groups:
        return pd.DataFrame(columns=columns)
    ref = groups[reference]
    ref_rng = np.random.default_rng(sub_seed(seed, outcome, reference))
    ref_boot = bootstrap_distribution(ref, np.mean, ref_rng, n_boot) if ref.size > 1 else None
    rows = []
    for arm, x in groups.items():
        if arm == reference:
            continue
        interval = (np.nan, np.nan)
        if ref_boot is not None and x.size > 1:
            rng = np.random.default_rng(sub_seed(seed, outcome, arm))
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios = bootstrap_distribution(x, np.mean, rng, n_boot) / ref_boot - 1
            interval = percentile_interval(ratios, level)
        with np.errstate(divide="ignore", invalid="ignore"):
            change = float(x.mean() / ref.mean() - 1)
        rows.append([arm, reference, float(x.mean()), float(ref.mean()), change, *interval])
    return pd.DataFrame(rows, columns=columns)


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n; (nan, nan) when n is 0."""
    if n <= 0:
        return (np.nan, np.nan)
    z = sps.norm.ppf(0.5 + level / 2)
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    low = 0.0 if k == 0 else max(0.0, min(p, centre - half))
    high = 1.0 if k == n else min(1.0, max(p, centre + half))
    return (float(low), float(high))


def share_at_least(
    df: pd.DataFrame, outcome: str, threshold: float, *, by: str = "arm", level: float = 0.95
) -> pd.DataFrame:
    """Share of non-missing `outcome` values >= threshold per group, with Wilson intervals."""
    rows = []
    for arm, x in _groups(df, outcome, by).items():
        k = int((x >= threshold).sum())
        rows.append([arm, x.size, k, k / x.size, *wilson_interval(k, x.size, level)])
    return pd.DataFrame(rows, columns=[by, "n", "k", "share", "ci_low", "ci_high"])


def flag(values: pd.Series) -> np.ndarray:
    """A recorded boolean column as a numpy bool array (missing counts as False)."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        return values.fillna(False).astype(bool).to_numpy()
    text = values.astype("str").str.strip().str.lower()
    return text.isin({"true", "t", "1", "yes", "y"}).to_numpy()


def apply_exclusions(participants: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows not flagged `excluded`, summary of arm/reason/n with a "total" row per arm).

    Only the recorded `excluded` flag decides; a missing flag keeps the row.
    """
    excluded = flag(participants["excluded"])
    dropped = participants.loc[excluded]
    reasons = dropped["exclusion_reason"].astype("str").str.strip()
    reasons = reasons.where(~dropped["exclusion_reason"].isna() & (reasons != ""), "unspecified")
    rows = []
    for arm in sorted(participants["arm"].dropna().astype("str").unique()):
        in_arm = (dropped["arm"].astype("str") == arm).to_numpy()
        counts = reasons[in_arm].value_counts().sort_index()
        rows += [[arm, str(reason), int(n)] for reason, n in counts.items()]
        rows.append([arm, "total", int(in_arm.sum())])
    summary = pd.DataFrame(rows, columns=["arm", "reason", "n"])
    return participants.loc[~excluded].copy(), summary
