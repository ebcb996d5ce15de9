"""A study as a training run's source: who may be trained on, and the collect stage over them.

Eligible: completed, real (pilots only with the run's `source_include_pilot`, never previews),
and `consent_training is True`, recorded at consent. A participant who declined, or whose study
version did not ask (None), is left out; a study that never asked has nobody to train on, and
the stage says so instead of training on everyone.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Q

from studies.models import Study
from training.models import TrainingRun
from training.pipeline.llm import CallStats
from training.pipeline.study_collect import collect_records
from training.services.runs import Reporter, run_dir
from training.services.study_rewards import completed_participants, study_records

NOT_ASKED = "the study did not ask for training consent: no participant agreed"


class NoEligibleParticipants(RuntimeError):
    """Nobody in the study agreed to training use: there is nothing to collect."""


def training_eligibility(study: Study, *, include_pilot: bool = False) -> dict[str, Any]:
    """The study and its completed participants: eligible, and left out by their consent."""
    counts = completed_participants(study, include_pilot=include_pilot).aggregate(
        completed=Count("id"),
        eligible=Count("id", filter=Q(consent_training=True)),
        declined=Count("id", filter=Q(consent_training=False)),
        not_asked=Count("id", filter=Q(consent_training__isnull=True)),
    )
    return {
        "study": study.slug,
        "title": study.title,
        "asks_training_consent": study.asks_training_consent,
        "include_pilot": include_pilot,
        "completed": counts["completed"],
        "eligible": counts["eligible"],
        "left_out_no_consent": counts["declined"] + counts["not_asked"],
        "left_out_declined": counts["declined"],
        "left_out_not_asked": counts["not_asked"],
        "rule": "completed participants whose consent_training is True (agreed at consent)",
    }


def _refusal(source: dict[str, Any]) -> str:
    if not source["asks_training_consent"]:
        return f"{source['study']}: {NOT_ASKED}"
    return (
        f"{source['study']}: no completed participant agreed to training use "
        f"({source['completed']} completed, {source['left_out_declined']} declined, "
        f"{source['left_out_not_asked']} not asked)"
    )


def collect_from_study(run: TrainingRun, reporter: Reporter) -> tuple[CallStats, dict[str, Any]]:
    """Score the real replies of the run's source study; the stats and the source record."""
    from training.services.work import run_reward, run_roles, run_sampling

    study = run.source_study
    assert study is not None
    source = training_eligibility(study, include_pilot=run.source_include_pilot)
    if not source["eligible"]:
        raise NoEligibleParticipants(_refusal(source))
    records = study_records(study, include_pilot=run.source_include_pilot, training_consent=True)
    reporter.log(
        f"collecting from study {study.slug}: {len(records)} participants who agreed to training "
        f"use, {source['left_out_no_consent']} left out (w={run.window}, S={run.samples}, "
        f"candidates={run.candidates}: the real reply + {run.candidates - 1} sampled)"
    )
    stats = collect_records(
        run_dir(run),
        records,
        run_roles(run),
        run_sampling(run),
        run_reward(run),
        source=source,
        on_progress=reporter.progress,
    )
    return stats, source
