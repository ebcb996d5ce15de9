"""Read-only numbers for the live study monitor: a fixed number of queries at any study size.

Every figure is a grouped aggregate in PostgreSQL (per arm, per stratum x arm, per endpoint), so the
monitor costs the same for 2 participants as for 2,000. Ratings are descriptive only: no tests here.
"""

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Aggregate, Avg, Count, F, FloatField, Func, Q, QuerySet
from django.db.models.fields.json import KT
from django.db.models.functions import Coalesce
from django.utils import timezone

from studies.models import Condition, Event, FinalSurvey, Message, Participant, Study, TurnRating
from studies.numbers import duration_text, percent_text
from studies.services.outcomes import IN_PROGRESS

P = Participant.Status
M = Message.Status
POPULATIONS = ("real", "pilot", "preview")
DROPPED = (P.ABANDONED, P.RETURNED, P.TIMED_OUT, P.EXCLUDED)
IN_PROGRESS_LIMIT = 50
ENDPOINT_WINDOW = timedelta(minutes=15)
PILOT_REPORT_KIND = "study.pilot.finished"
# What the in-progress table shows; anything else would be a query per row.
ROW_FIELDS = ("external_id", "status", "active_seconds", "condition__key", "condition__label")


class Median(Aggregate):
    """PostgreSQL's continuous median (percentile_cont 0.5); NULLs are ignored."""

    function = "PERCENTILE_CONT"
    name = "Median"
    template = "%(function)s(0.5) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()


class EpochSeconds(Func):
    """An interval as seconds (double precision)."""

    template = "EXTRACT(EPOCH FROM %(expressions)s)::double precision"
    output_field = FloatField()


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass(frozen=True)
class Counts:
    entered: int = 0
    consented: int = 0
    in_progress: int = 0
    declined: int = 0
    completed: int = 0
    dropped: int = 0
    dropped_after_consent: int = 0
    median_wall: float | None = None
    median_active: float | None = None

    @property
    def completion_rate(self) -> float | None:
        """Completed (and not excluded) over consented."""
        return _ratio(self.completed, self.consented)

    @property
    def dropout_rate(self) -> float | None:
        """Ended without completing (or excluded) over consented."""
        return _ratio(self.dropped_after_consent, self.consented)

    @property
    def completion_text(self) -> str:
        return percent_text(self.completion_rate)

    @property
    def dropout_text(self) -> str:
        return percent_text(self.dropout_rate)

    @property
    def median_wall_text(self) -> str:
        return duration_text(self.median_wall)

    @property
    def median_active_text(self) -> str:
        return duration_text(self.median_active)


@dataclass(frozen=True)
class ArmRow:
    key: str
    label: str
    is_active: bool
    target: int | None
    cap: int | None
    cap_per_stratum: int | None
    counts: Counts
    rating_mean: float | None = None
    rating_n: int = 0
    rating_people: int = 0
    quality_mean: float | None = None
    overall_mean: float | None = None
    final_n: int = 0

    @property
    def target_share(self) -> float | None:
        """Completed as a share of the arm's target (or its cap when no target is set)."""
        goal = self.target or self.cap
        return _ratio(self.counts.completed, goal) if goal else None

    @property
    def target_text(self) -> str:
        return percent_text(self.target_share)


@dataclass(frozen=True)
class StratumRow:
    stratum: str
    cells: list[dict[str, int]]


@dataclass(frozen=True)
class EndpointRow:
    name: str
    health: str
    checked_at: datetime | None
    replies: int
    failed: int
    interrupted: int
    streaming: int
    median_ttft: float | None

    @property
    def error_share(self) -> float | None:
        """Failed or interrupted replies over the finished ones in the window."""
        return _ratio(self.failed + self.interrupted, self.replies - self.streaming)

    @property
    def error_text(self) -> str:
        return percent_text(self.error_share)


@dataclass(frozen=True)
class Snapshot:
    study: Study
    population: str
    arms: list[ArmRow]
    unassigned: Counts
    totals: Counts
    strata: list[StratumRow]
    in_progress: list[Participant]
    endpoints: list[EndpointRow]
    populations: dict[str, int]
    pilot_report: dict[str, Any] | None
    taken_at: datetime


def population_q(population: str, prefix: str = "") -> Q:
    """Filter for real participants, pilots or researcher previews (`prefix` for a relation)."""
    if population == "pilot":
        return Q(**{f"{prefix}is_pilot": True})
    if population == "preview":
        return Q(**{f"{prefix}is_preview": True})
    return Q(**{f"{prefix}is_pilot": False, f"{prefix}is_preview": False})


def _count_aggregates() -> dict[str, Any]:
    dropped = Q(status__in=DROPPED) | Q(excluded_at__isnull=False)
    completed = Q(status=P.COMPLETED, excluded_at__isnull=True)
    return {
        "entered": Count("pk"),
        "consented": Count("pk", filter=Q(consented_at__isnull=False)),
        "in_progress": Count("pk", filter=Q(status__in=IN_PROGRESS)),
        "declined": Count("pk", filter=Q(status=P.DECLINED)),
        "completed": Count("pk", filter=completed),
        "dropped": Count("pk", filter=dropped),
        "dropped_after_consent": Count("pk", filter=dropped & Q(consented_at__isnull=False)),
        "median_wall": Median(
            EpochSeconds(F("completed_at") - F("consented_at")), filter=completed
        ),
        "median_active": Median("active_seconds", filter=completed),
    }


def _per_arm(qs: QuerySet) -> dict[int | None, Counts]:
    rows = qs.values("condition_id").annotate(**_count_aggregates()).order_by()
    return {row.pop("condition_id"): Counts(**row) for row in rows}


def _strata(qs: QuerySet, conditions: list[Condition]) -> list[StratumRow]:
    rows = (
        qs.filter(condition__isnull=False)
        .annotate(stratum=KT("allocation__arm__stratum"))
        .values("stratum", "condition_id")
        .annotate(
            assigned=Count("pk"),
            in_progress=Count("pk", filter=Q(status__in=IN_PROGRESS)),
            completed=Count("pk", filter=Q(status=P.COMPLETED, excluded_at__isnull=True)),
        )
        .order_by()
    )
    grid: dict[str, dict[int, dict[str, int]]] = {}
    for row in rows:
        # Pilot and preview participants draw from prefixed sequences ("pilot/all").
        name = (row["stratum"] or "(none)").removeprefix("pilot/").removeprefix("preview/")
        cell = grid.setdefault(name, {}).setdefault(
            row["condition_id"], {"assigned": 0, "in_progress": 0, "completed": 0}
        )
        for key in cell:
            cell[key] += row[key]
    empty = {"assigned": 0, "in_progress": 0, "completed": 0}
    return [
        StratumRow(name, [grid[name].get(c.pk, empty) for c in conditions]) for name in sorted(grid)
    ]


def _ratings(study: Study, population: str) -> tuple[dict, dict]:
    counted = population_q(population, "participant__") & Q(
        participant__study_id=study.pk, participant__excluded_at__isnull=True
    )
    turn = (
        TurnRating.objects.filter(counted)
        .values("participant__condition_id")
        .annotate(mean=Avg("score"), n=Count("pk"), people=Count("participant_id", distinct=True))
        .order_by()
    )
    final = (
        FinalSurvey.objects.filter(counted)
        .values("participant__condition_id")
        .annotate(
            quality=Avg("document_quality"), overall=Avg("overall_interaction"), n=Count("pk")
        )
        .order_by()
    )
    return (
        {r["participant__condition_id"]: r for r in turn},
        {r["participant__condition_id"]: r for r in final},
    )


def _arm_rows(
    study: Study, conditions: list[Condition], counts: dict, turn: dict, final: dict
) -> list[ArmRow]:
    rows = []
    for c in conditions:
        t, f = turn.get(c.pk, {}), final.get(c.pk, {})
        rows.append(
            ArmRow(
                key=c.key,
                label=c.label,
                is_active=c.is_active,
                target=study.target_per_arm,
                cap=c.cap,
                cap_per_stratum=c.cap_per_stratum,
                counts=counts.get(c.pk, Counts()),
                rating_mean=t.get("mean"),
                rating_n=t.get("n", 0),
                rating_people=t.get("people", 0),
                quality_mean=f.get("quality"),
                overall_mean=f.get("overall"),
                final_n=f.get("n", 0),
            )
        )
    return rows


def _in_progress(qs: QuerySet) -> list[Participant]:
    return list(
        qs.filter(status__in=IN_PROGRESS)
        .select_related("condition")
        .only(*ROW_FIELDS)
        .annotate(
            turns=Count(
                "messages",
                filter=Q(
                    messages__role=Message.Role.ASSISTANT,
                    messages__status=M.COMPLETE,
                    messages__continuation_of__isnull=True,
                ),
            ),
            streaming=Count("messages", filter=Q(messages__status=M.STREAMING)),
            last_seen=Coalesce("last_active_at", "entered_at"),
        )
        .order_by("-last_seen", "-pk")[:IN_PROGRESS_LIMIT]
    )


def _endpoints(study: Study, conditions: list[Condition], now: datetime) -> list[EndpointRow]:
    stats = {
        row.pop("participant__condition__endpoint_id"): row
        for row in Message.objects.filter(
            participant__study_id=study.pk,
            role=Message.Role.ASSISTANT,
            created_at__gte=now - ENDPOINT_WINDOW,
        )
        .values("participant__condition__endpoint_id")
        .annotate(
            replies=Count("pk"),
            failed=Count("pk", filter=Q(status=M.FAILED)),
            interrupted=Count("pk", filter=Q(status=M.INTERRUPTED)),
            streaming=Count("pk", filter=Q(status=M.STREAMING)),
            median_ttft=Median("time_to_first_token"),
        )
        .order_by()
    }
    endpoints = {c.endpoint_id: c.endpoint for c in conditions}
    blank = {"replies": 0, "failed": 0, "interrupted": 0, "streaming": 0, "median_ttft": None}
    return [
        EndpointRow(e.name, e.health, e.health_checked_at, **stats.get(pk, blank))
        for pk, e in sorted(endpoints.items(), key=lambda item: item[1].name)
    ]


def _populations(study: Study) -> dict[str, int]:
    aggregates = {}
    for name in POPULATIONS:
        aggregates[name] = Count("pk", filter=population_q(name))
        aggregates[f"{name}_in_progress"] = Count(
            "pk", filter=population_q(name) & Q(status__in=IN_PROGRESS)
        )
    return Participant.objects.filter(study_id=study.pk).aggregate(**aggregates)


def latest_pilot_report(study: Study) -> dict[str, Any] | None:
    """The newest pilot report (`study.pilot.finished` payload) as display items, or None."""
    event = (
        Event.objects.filter(study_id=study.pk, kind=PILOT_REPORT_KIND)
        .order_by("-created_at", "-pk")
        .values("created_at", "payload")
        .first()
    )
    if event is None:
        return None
    payload = event["payload"] if isinstance(event["payload"], dict) else {}
    items = [
        (
            str(key),
            value if isinstance(value, str | int | float) else json.dumps(value, default=str),
        )
        for key, value in payload.items()
    ]
    return {"created_at": event["created_at"], "items": items}


def monitor_snapshot(
    study: Study, *, population: str = "real", now: datetime | None = None
) -> Snapshot:
    """Everything the monitor shows for one population, in a fixed number of queries."""
    now = now or timezone.now()
    population = population if population in POPULATIONS else "real"
    qs = Participant.objects.filter(population_q(population), study_id=study.pk)
    conditions = list(study.conditions.select_related("endpoint").order_by("key"))
    per_arm = _per_arm(qs)
    turn, final = _ratings(study, population)
    return Snapshot(
        study=study,
        population=population,
        arms=_arm_rows(study, conditions, per_arm, turn, final),
        unassigned=per_arm.get(None, Counts()),
        totals=Counts(**qs.aggregate(**_count_aggregates())),
        strata=_strata(qs, conditions),
        in_progress=_in_progress(qs),
        endpoints=_endpoints(study, conditions, now),
        populations=_populations(study),
        pilot_report=latest_pilot_report(study),
        taken_at=now,
    )
