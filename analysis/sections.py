"""The report's numbers as independent tasks (one per outcome, one for the rating trajectories),
run side by side in forked worker processes when the machine has several CPUs.

Each task records its own warnings: `warnings.catch_warnings` is process-global state, so tasks
must not share a process while they run (hence processes, not threads).
"""

import math
import multiprocessing
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from typing import Any

import pandas as pd

from analysis import power, stats, trajectories

ALPHA = 0.05
TARGET_POWER = 0.8
LEVEL = 0.95
SHARE_THRESHOLDS = (8, 9)
MAX_WORKERS = 4

Task = tuple[str, Callable[..., dict[str, Any]], tuple[Any, ...]]


def _solved(solve: Callable[..., float], *args: Any, **kwargs: Any) -> float | None:
    # The power solvers give up (NaN, or a ValueError from it) on extreme effects; such a cell
    # is reported as missing rather than failing the whole report.
    try:
        value = float(solve(*args, **kwargs))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def power_rows(pairs: pd.DataFrame) -> list[dict[str, Any]]:
    """Achieved power and the N per arm needed, for each pair's observed Hedges' g."""
    rows = []
    for pair in pairs.itertuples(index=False):
        g, n_a, n_b = float(pair.hedges_g), int(pair.n_a), int(pair.n_b)
        known = math.isfinite(g) and abs(g) > 1e-9
        achieved = _solved(power.achieved_power, g, n_a, n_b, alpha=ALPHA)
        needed = _solved(power.n_per_arm, g, alpha=ALPHA, power=TARGET_POWER)
        rows.append(
            {
                "arm_a": pair.arm_a,
                "arm_b": pair.arm_b,
                "n_a": n_a,
                "n_b": n_b,
                "hedges_g": g,
                "achieved_power": achieved if known else None,
                "n_per_arm_for_observed": int(needed) if known and needed is not None else None,
            }
        )
    return rows


def outcome_sections(
    people: pd.DataFrame,
    outcome: str,
    arms: list[str],
    reference: str,
    shares: bool,
    seed: int,
    n_boot: int,
) -> dict[str, Any]:
    """Every section's entry for one outcome (shares only where asked for)."""
    pairs = stats.pairwise(
        people,
        outcome,
        order=stats.reference_first(arms, reference),
        reference=reference,
        seed=seed,
        n_boot=n_boot,
    )
    result = {
        "descriptives": stats.describe(people, outcome, seed=seed, n_boot=n_boot, level=LEVEL),
        "omnibus": asdict(stats.omnibus(people, outcome)),
        "pairwise": pairs,
        "power": power_rows(pairs),
        "relative_change": stats.relative_change(
            people, outcome, reference=reference, seed=seed, n_boot=n_boot, level=LEVEL
        ),
        "by_task_type": stats.by_group(people, outcome, seed=seed, n_boot=n_boot, level=LEVEL),
    }
    if shares:
        result["shares"] = {
            str(t): stats.share_at_least(people, outcome, t, level=LEVEL) for t in SHARE_THRESHOLDS
        }
    return result


def trajectory_sections(
    ratings: pd.DataFrame, reference: str, seed: int, n_boot: int
) -> dict[str, Any]:
    """Mean rating per checkpoint and arm with CIs, and the mixed model."""
    means = trajectories.trajectory_means(ratings, seed=seed, n_boot=n_boot, level=LEVEL)
    model = trajectories.mixed_model(ratings, reference_arm=reference)
    return {"means": means, "mixed_model": asdict(model)}


def _recorded(
    task: Callable[..., dict[str, Any]], args: tuple[Any, ...]
) -> tuple[dict[str, Any], list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = task(*args)
    return result, [f"{w.category.__name__}: {w.message}" for w in caught]


def default_workers() -> int:
    """CPUs this process may use, at most MAX_WORKERS; 1 inside a daemon (a Celery worker)."""
    if (
        multiprocessing.current_process().daemon
        or "fork" not in multiprocessing.get_all_start_methods()
    ):
        return 1
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


def run_tasks(
    tasks: list[Task], workers: int, done: Callable[[str, int], None]
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """({name: result}, warnings) of every task; done(name, count) as each one finishes."""
    results: dict[str, dict[str, Any]] = {}
    caught: list[str] = []
    if workers <= 1:
        for name, task, args in tasks:
            results[name], messages = _recorded(task, args)
            caught += messages
            done(name, len(results))
        return results, caught
    # fork: the workers start in milliseconds with analysis already imported.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {pool.submit(_recorded, task, args): name for name, task, args in tasks}
        for future in as_completed(futures):
            results[futures[future]], messages = future.result()
            caught += messages
            done(futures[future], len(results))
    return results, caught
