"""The study report: every number of the analysis in summary.json, figures, a self-contained
report.html and a notebook that reproduces it step by step.

    python -m analysis report EXPORT_DIR --out OUT [--reference-arm ARM] [--seed N]
        [--include-pilot]

Every bootstrap gets the same `seed` (the stats functions derive a sub-seed per arm and pair), so
the notebook, which makes the same calls, reproduces the summary's numbers exactly.
"""

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pandas as pd

from analysis import agreement, documents, figures, power, sections, stats
from analysis.html import render_html
from analysis.io import Export, checkpoints, has_table, load_export
from analysis.notebook import build_notebook
from analysis.schema import SCHEMA_VERSION, rating_column
from analysis.sections import ALPHA, LEVEL, TARGET_POWER

BASE_OUTCOMES = (
    "overall_interaction",
    "document_quality",
    "wall_seconds",
    "active_seconds",
    "n_user_turns",
    "assistant_tokens",
    "user_tokens",
)
BENCHMARK_EFFECT = 0.5  # Cohen's "medium" d, the usual planning value
REPORT_TABLES = ("participants", "turn_ratings")
# Read only when the export has document_versions (exports before the document pane have not).
DOCUMENT_TABLES = ("messages", "document_versions")

Progress = Callable[[str, float], None]


@dataclass
class Prepared:
    """The analysed rows: pilots dropped (unless asked) and recorded exclusions applied."""

    participants: pd.DataFrame
    turn_ratings: pd.DataFrame
    document_versions: pd.DataFrame
    replies: pd.DataFrame  # complete assistant messages of the analysed participants
    exclusions: pd.DataFrame
    n_loaded: int
    n_pilot_dropped: int
    not_completed: dict[str, dict[str, int]]  # arm -> status -> n (not analysed)
    n_declined: int  # refused consent: never assigned an arm, in no arm's count
    arms: list[str]
    reference_arm: str
    outcomes: list[str]
    share_outcomes: list[str]


def choose_reference_arm(arms: list[str], requested: str | None) -> str:
    """The requested arm, else "base" if present, else the first arm alphabetically."""
    if requested is not None:
        if requested not in arms:
            raise ValueError(f"reference arm {requested!r} is not one of: {', '.join(arms)}")
        return requested
    if not arms:
        raise ValueError("the export has no participants with an arm")
    return "base" if "base" in arms else sorted(arms)[0]


def _nothing_to_analyse(
    *, loaded: int, pilot: int, dropped: int, declined: int, excluded: int
) -> str:
    """Why no participant is left, in the words of the admin's and the CLI's options."""
    if loaded and pilot == loaded:
        return (
            f"no completed participant to analyse: all {loaded} are pilot participants, left out "
            "by default; include pilot participants (the report page's checkbox, "
            "--include-pilot) to analyse them"
        )
    counts = [
        f"{n} {what}"
        for n, what in [
            (pilot, "pilot (left out by default: include pilot participants to keep them)"),
            (declined, "declined consent"),
            (dropped, "not completed"),
            (excluded, "excluded by a recorded rule"),
        ]
        if n
    ]
    return f"no completed participant to analyse: {loaded} in the export" + (
        f", of which {', '.join(counts)}" if counts else ""
    )


def prepare(
    export: Export, *, reference_arm: str | None = None, include_pilot: bool = False
) -> Prepared:
    """Drop pilots (unless include_pilot), keep completed participations, apply recorded
    exclusions, pick the reference arm."""
    people = export.participants
    pilot = stats.flag(people["is_pilot"])
    if not include_pilot:
        people = people.loc[~pilot]
    # Outcomes are measured on completed participations only (dropouts have no final survey and a
    # truncated time); who did not complete is counted per arm and status instead.
    completed = people["status"].astype("string").eq("completed").fillna(False).astype(bool)
    declined = people["status"].astype("string").eq("declined").fillna(False).astype(bool)
    dropped = people.loc[~completed & ~declined]
    not_completed: dict[str, dict[str, int]] = {}
    for (arm, status), n in dropped.groupby(["arm", "status"], dropna=False).size().items():
        not_completed.setdefault(str(arm), {})[str(status)] = int(n)
    people = people.loc[completed]
    kept, exclusions = stats.apply_exclusions(people)
    kept = kept.assign(arm=kept["arm"].astype("str"))
    arms = sorted(kept["arm"].dropna().unique().tolist())
    if not arms:
        raise ValueError(
            _nothing_to_analyse(
                loaded=len(export.participants),
                pilot=0 if include_pilot else int(pilot.sum()),
                dropped=len(dropped),
                declined=int(declined.sum()),
                excluded=len(people) - len(kept),
            )
        )
    ids = set(kept["participant_id"])
    ratings = export.turn_ratings
    ratings = ratings.loc[ratings["participant_id"].isin(ids)].assign(
        arm=lambda r: r["arm"].astype("str")
    )
    messages = export.messages
    replies = messages.loc[
        messages["participant_id"].isin(ids) & messages["role"].eq("assistant").fillna(False)
    ]
    versions = export.document_versions
    points = checkpoints(kept)
    return Prepared(
        participants=kept,
        turn_ratings=ratings,
        document_versions=versions.loc[versions["participant_id"].isin(ids)],
        replies=replies,
        exclusions=exclusions,
        n_loaded=len(export.participants),
        n_pilot_dropped=0 if include_pilot else int(pilot.sum()),
        not_completed=not_completed,
        n_declined=int(declined.sum()),
        arms=arms,
        reference_arm=choose_reference_arm(arms, reference_arm),
        outcomes=[o for o in BASE_OUTCOMES if o in kept] + [rating_column(k) for k in points],
        share_outcomes=["overall_interaction"] + [rating_column(k) for k in points],
    )


def jsonable(value: Any) -> Any:
    """Value with DataFrames as records, numpy scalars as Python ones and NaN/inf as None."""
    if isinstance(value, pd.DataFrame):
        return [jsonable(r) for r in value.to_dict(orient="records")]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def _sections(
    prep: Prepared, seed: int, n_boot: int, workers: int, progress: Progress
) -> tuple[dict[str, Any], list[str]]:
    ref = prep.reference_arm
    # The longest tasks first (the trajectories' mixed model, then the documents' text overlap),
    # so that they overlap the outcomes.
    tasks: list[sections.Task] = [
        ("trajectories", sections.trajectory_sections, (prep.turn_ratings, ref, seed, n_boot)),
        (
            "documents",
            documents.document_sections,
            (prep.participants, prep.document_versions, prep.replies, prep.arms, seed, n_boot,
             LEVEL),
        ),
    ]  # fmt: skip
    tasks += [
        (
            outcome,
            sections.outcome_sections,
            (prep.participants, outcome, prep.arms, ref, outcome in prep.share_outcomes, seed,
             n_boot),
        )
        for outcome in prep.outcomes
    ]  # fmt: skip
    results, caught = sections.run_tasks(
        tasks, workers, lambda name, n: progress(name, 0.1 + 0.75 * n / len(tasks))
    )
    out: dict[str, Any] = {
        "trajectories": results["trajectories"],
        "documents": results["documents"],
    }
    for section in ("descriptives", "omnibus", "pairwise", "relative_change", "by_task_type"):
        out[section] = {o: results[o][section] for o in prep.outcomes}
    out["shares"] = {o: results[o]["shares"] for o in prep.share_outcomes if o in results}
    out["power"] = {
        "alpha": ALPHA,
        "power": TARGET_POWER,
        "benchmark_effect": BENCHMARK_EFFECT,
        "n_per_arm_for_benchmark": power.n_per_arm(
            BENCHMARK_EFFECT, alpha=ALPHA, power=TARGET_POWER
        ),
        "pairs": {o: results[o]["power"] for o in prep.outcomes},
    }
    return out, caught


def _sample(prep: Prepared) -> dict[str, Any]:
    people = prep.participants
    by_arm = people.groupby("arm").size()
    by_type = people.groupby(["task_type", "arm"]).size().rename("n").reset_index()
    topics = people.groupby(["task_type", "topic", "arm"]).size().rename("n").reset_index()
    return {
        "n_loaded": prep.n_loaded,
        "n_pilot_dropped": prep.n_pilot_dropped,
        "n_declined": prep.n_declined,
        "n_not_completed": sum(sum(v.values()) for v in prep.not_completed.values()),
        "not_completed_by_arm": prep.not_completed,
        "n_excluded": int(prep.exclusions.loc[prep.exclusions["reason"] == "total", "n"].sum()),
        "n_analysed": len(people),
        "n_turn_ratings": len(prep.turn_ratings),
        "by_arm": {str(k): int(v) for k, v in by_arm.items()},
        "by_task_type": by_type,
        "by_topic": topics,
    }


def _figures(prep: Prepared, means: pd.DataFrame, directory: Path) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for outcome in figures.VIOLINS:
        if outcome in prep.participants:
            name = f"violin_{outcome}.png"
            if figures.violin(prep.participants, outcome, prep.arms, directory / name):
                written.append(name)
    if figures.trajectories(means, prep.arms, directory / "trajectories.png", LEVEL):
        written.append("trajectories.png")
    return written


def summarise(
    export: Export,
    *,
    reference_arm: str | None = None,
    seed: int = 0,
    include_pilot: bool = False,
    n_boot: int = 2000,
    workers: int | None = None,
    progress: Progress | None = None,
    reply_rewards: pd.DataFrame | None = None,
    rewards_settings: dict[str, Any] | None = None,
) -> tuple[Prepared, dict[str, Any]]:
    """(prepared rows, the summary before JSON conversion).

    Warnings raised while computing (a mixed model that did not converge, a degenerate test) go
    into the summary's "warnings" instead of the log, where nobody reading the report sees them.
    """
    report = progress or (lambda step, fraction: None)
    prep = prepare(export, reference_arm=reference_arm, include_pilot=include_pilot)
    report("prepared", 0.1)
    n_workers = sections.default_workers() if workers is None else workers
    computed, caught = _sections(prep, seed, n_boot, n_workers, report)
    summary = {
        "schema_version": SCHEMA_VERSION,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "export": export.manifest,
        "settings": {
            "reference_arm": prep.reference_arm,
            "seed": seed,
            "n_boot": n_boot,
            "level": LEVEL,
            "include_pilot": include_pilot,
        },
        "arms": prep.arms,
        "outcomes": prep.outcomes,
        "sample": _sample(prep),
        "exclusions": prep.exclusions,
        **computed,
        "reward_agreement": _reward_agreement(prep, reply_rewards, rewards_settings, seed, n_boot),
        "warnings": sorted(set(caught)),
    }
    return prep, summary


REWARDS_FILE = "reply_rewards.csv"  # written by `manage.py score_study` beside an export
REWARDS_SETTINGS_FILE = "reply_rewards_settings.json"


def _reward_agreement(
    prep: Prepared,
    reply_rewards: pd.DataFrame | None,
    settings: dict[str, Any] | None,
    seed: int,
    n_boot: int,
) -> dict[str, Any] | None:
    """How the multiturn-aware reward of each reply relates to the participants' own ratings, over
    the participants this report analyses (None when no rewards were computed)."""
    if reply_rewards is None:
        return None
    ids = set(prep.participants["participant_id"].astype("str"))
    mine = reply_rewards.loc[reply_rewards["participant_id"].astype("str").isin(ids)]
    section = agreement.agreement_section(
        mine,
        prep.turn_ratings,
        prep.participants,
        seed=stats.sub_seed(seed, "reward_agreement"),
        n_boot=n_boot,
        level=LEVEL,
        arms=prep.arms,
    )
    models = [{"arm": arm, **fit} for arm, fit in section["mixed_model"].items()]
    return {**section, "mixed_model_rows": models, "settings": settings or {}}


def load_rewards(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A reply_rewards table and the settings it was computed with (the JSON beside it)."""
    table = pd.read_csv(
        path, dtype={"participant_id": "string", "arm": "string", "error": "string"}
    )
    table["error"] = table["error"].fillna("")
    settings_path = path.with_name(REWARDS_SETTINGS_FILE)
    settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
    return table, settings


def build_report(
    export_dir: str | Path,
    out_dir: str | Path,
    *,
    reference_arm: str | None = None,
    seed: int = 0,
    include_pilot: bool = False,
    n_boot: int = 2000,
    progress: Progress | None = None,
    workers: int | None = None,
    rewards: str | Path | None = None,
) -> dict[str, Any]:
    """Write summary.json, figures/*.png, report.html and notebook.ipynb; return the summary.

    rewards: a reply_rewards.csv (`manage.py score_study`); by default the one inside export_dir,
    if there is one. Without it the reward-agreement section says it was not computed.

    workers: processes computing side by side (default: the CPUs available, at most 4; 1, i.e.
    in this process, inside a daemonic process such as a Celery worker).
    """
    report = progress or (lambda step, fraction: None)
    with_documents = has_table(export_dir, "document_versions")
    export = load_export(
        export_dir, tables=REPORT_TABLES + (DOCUMENT_TABLES if with_documents else ())
    )
    beside = Path(export_dir) / REWARDS_FILE
    rewards_path = Path(rewards) if rewards is not None else beside if beside.is_file() else None
    reply_rewards, rewards_settings = (
        load_rewards(rewards_path) if rewards_path is not None else (None, None)
    )
    report("loaded", 0.05)
    prep, raw = summarise(
        export,
        reference_arm=reference_arm,
        seed=seed,
        include_pilot=include_pilot,
        n_boot=n_boot,
        workers=workers,
        progress=report,
        reply_rewards=reply_rewards,
        rewards_settings=rewards_settings,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw["figures"] = _figures(prep, raw["trajectories"]["means"], out / "figures")
    report("figures", 0.9)
    summary: dict[str, Any] = jsonable(raw)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    (out / "report.html").write_text(render_html(summary, out / "figures"))
    notebook = build_notebook(
        str(Path(export_dir).resolve()),
        reference_arm=prep.reference_arm,
        seed=seed,
        include_pilot=include_pilot,
        n_boot=n_boot,
    )
    nbformat.write(notebook, out / "notebook.ipynb")
    report("done", 1.0)
    return summary
