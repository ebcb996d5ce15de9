"""Power of the two-sided two-sample t test (Cohen's d): the N per arm a study needs, and the
power a finished study achieved."""

import math
import warnings

from scipy import stats
from statsmodels.stats.power import TTestIndPower


def _power(effect_size: float, n: float, ratio: float, alpha: float) -> float:
    """Power of the two-sided pooled t test from the noncentral t distribution (scipy).

    The same quantity as statsmodels' TTestIndPower.power, which returns NaN once the power is
    within rounding of 1 (e.g. d = 0.91 with 284 and 289 per arm); scipy's noncentral t does
    not, and the normal approximation covers anything scipy cannot evaluate.
    """
    n_b = n * ratio
    df = n + n_b - 2
    noncentrality = abs(effect_size) * math.sqrt(n * n_b / (n + n_b))
    critical = float(stats.t.ppf(1 - alpha / 2, df))
    power = float(
        stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality)
    )
    if not math.isfinite(power):
        power = float(
            stats.norm.sf(critical - noncentrality) + stats.norm.cdf(-critical - noncentrality)
        )
    return min(1.0, max(0.0, power))


def n_per_arm(
    effect_size: float, *, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0
) -> int:
    """Smallest N in the first arm (the second gets ratio * N) reaching `power` for Cohen's d.

    Searched over integers on statsmodels' power function rather than rounding its root finder,
    which gives up (NaN) on very large effects. Raises ValueError for a zero or missing effect.
    """
    d = abs(effect_size)
    if not math.isfinite(d) or d == 0:
        raise ValueError(f"no finite N reaches the power for an effect of {effect_size}")
    if not (0 < power < 1 and 0 < alpha < 1):
        raise ValueError(f"power and alpha must lie strictly between 0 and 1: {power}, {alpha}")
    high = 2
    while _power(d, high, ratio, alpha) < power:
        high *= 2
    low = max(2, high // 2)
    while low < high:  # smallest n in [low, high] with enough power
        middle = (low + high) // 2
        low, high = (
            (low, middle) if _power(d, middle, ratio, alpha) >= power else (middle + 1, high)
        )
    return high


def achieved_power(effect_size: float, n_a: int, n_b: int, *, alpha: float = 0.05) -> float:
    """Power of the two-sided pooled-variance t test to detect `effect_size` with these Ns."""
    if n_a < 2 or n_b < 2 or not math.isfinite(effect_size):
        return math.nan
    return _power(effect_size, n_a, n_b / n_a, alpha)


def detectable_effect(n_a: int, n_b: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest Cohen's d these Ns detect with the given power (the minimum detectable effect)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = TTestIndPower().solve_power(nobs1=n_a, alpha=alpha, power=power, ratio=n_b / n_a)
    return float(d)


def cohens_d_for_change(change: float, reference_mean: float, sd: float) -> float:
    """Cohen's d of a relative change of the mean (e.g. +0.176 of 7.0 with SD 1.6)."""
    return change * reference_mean / sd
