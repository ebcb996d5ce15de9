"""Randomised assignment: the locked service around the pure allocator (`allocation`).

Concurrency: every allocation and every release locks the AssignmentCounter rows it may touch
FOR UPDATE in one statement, in one global order (stratum names, bytewise): the document-type
stratum and the arm strata, and, only where an arm has a study-wide cap, every real stratum of the
study (their occupancy summed is the study's, so a capped arrival waits for every allocation in
flight and sees them all). A capped arrival first locks the study row ("study") on its own: capped
arrivals take turns on it, so the statement that then locks every real stratum sees the rows an
earlier one created (a new stratum's first arrival). The study row always comes first and releases
never take it, so the order stays one order everywhere. One order everywhere means no deadlocks;
the locks serialise a study's arrivals across processes, so no two arrivals share a slot.
Everything that can be read first is read first (`assignment_plan`: arms, document types, strata,
missing counter rows created), so that under the locks only the counters' UPDATE and the caller's
own writes run before COMMIT.
Pilot and preview participants use their own rows ("pilot/", "preview/"): they never move real
balance or caps.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Collate
from django.utils import timezone
from django.utils.translation import gettext as _

from studies.models import AssignmentCounter, Condition, Participant, Study
from studies.services.allocation import (
    ALGORITHM_VERSION,
    DOCUMENT_STRATUM,
    LEAST_FILLED,
    PERMUTED_BLOCKS,
    STUDY_ROW,
    AllocationFull,
    Arm,
    Design,
    allocate,
    arm_stratum,
    release,
)
from studies.services.errors import StudyActionError
from studies.services.events import event_record
from studies.services.reentry import TOKEN_PARAMS


def arm_design(study: Study, conditions: Sequence[Condition], *, caps: bool = True) -> Design:
    """The allocator's view of a study's active arms."""
    arms = tuple(
        Arm(c.key, c.weight, c.cap, c.cap_per_stratum) for c in sorted(conditions, key=_key)
    )
    sizes = tuple(study.block_sizes) if study.block_sizes else (study.block_size,)
    return Design(arms, study.seed, study.design, sizes, study.reuse_slots, caps)


def _key(condition: Condition) -> str:
    return condition.key


def document_design(study: Study, document_types: Sequence[str]) -> Design:
    """Document types are balanced by permuted blocks of one of each type, never capped."""
    arms = tuple(Arm(d) for d in sorted(document_types))
    return Design(arms, study.seed, PERMUTED_BLOCKS, (len(arms),), study.reuse_slots, caps=False)


def _problems(study: Study, conditions: Sequence[Condition], doc_types: Sequence[str]) -> list[str]:
    problems = []
    if not conditions:
        problems.append("The study has no active arms.")
    if not doc_types:
        problems.append("The study has no tasks, so no document type can be assigned.")
    if study.design not in (PERMUTED_BLOCKS, LEAST_FILLED):
        problems.append(f"Unknown design {study.design!r}.")
    total = sum(c.weight for c in conditions)
    sizes = study.block_sizes if study.block_sizes else [study.block_size]
    if study.design == PERMUTED_BLOCKS and total:
        if not isinstance(sizes, list) or not all(_positive_int(s) for s in sizes):
            problems.append("Block sizes must be a list of positive whole numbers.")
        elif bad := sorted({s for s in sizes if s % total}):
            listed = ", ".join(map(str, bad))
            problems.append(
                f"Block size {listed} is not a multiple of the summed active arm weights ({total})."
            )
    by = study.stratify_by
    if by not in ("", "document_type") and not (by.startswith("param:") and len(by) > 6):
        problems.append(f"Stratify by {by!r}: use blank, 'document_type' or 'param:NAME'.")
    elif by.removeprefix("param:") in TOKEN_PARAMS:
        # A stratum is stored and exported; a platform token is a credential (reentry).
        problems.append(f"Stratify by {by!r}: a platform's per-attempt token is not a stratum.")
    return problems


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def design_problems(study: Study) -> list[str]:
    """What makes this study's design unusable (empty when it is fine); for the admin."""
    conditions = list(study.conditions.filter(is_active=True))
    doc_types = sorted(set(study.tasks.values_list("document_type", flat=True)))
    return _problems(study, conditions, doc_types)


@dataclass(frozen=True)
class Assigned:
    """What consent hands the participant: an arm, a document type and the full record."""

    condition_key: str
    document_type: str
    record: dict


def _stratum_prefix(participant: Participant) -> str:
    if participant.is_preview:
        return "preview/"
    if participant.is_pilot:
        return "pilot/"
    return ""


def _ensure_rows(study_id: int, strata: Sequence[str]) -> None:
    """Create the counter rows of `strata` that do not exist yet (before any lock is taken)."""
    names = set(strata)
    found = set(
        AssignmentCounter.objects.filter(study_id=study_id, stratum__in=names).values_list(
            "stratum", flat=True
        )
    )
    if missing := names - found:
        # INSERT ... ON CONFLICT DO NOTHING: a concurrent first arrival may be creating the same
        # row; get_or_create would raise IntegrityError and abort the caller's transaction.
        AssignmentCounter.objects.bulk_create(
            [AssignmentCounter(study_id=study_id, stratum=n) for n in sorted(missing)],
            ignore_conflicts=True,
        )


def _lock(
    study_id: int, strata: Sequence[str], *, every_real: bool = False
) -> dict[str, AssignmentCounter]:
    """Lock the counter rows of `strata` (and with `every_real` all real strata of the study) FOR
    UPDATE in one statement. The rows exist (`_ensure_rows`)."""
    # Rows are locked in ORDER BY order, and "C" collation is the code-point order of sorted():
    # one global order in every transaction, so two of them never wait for each other in a cycle.
    wanted = Q(stratum__in=sorted(set(strata)))
    if every_real:
        wanted |= ~Q(stratum__startswith="pilot/") & ~Q(stratum__startswith="preview/")
    rows = (
        AssignmentCounter.objects.select_for_update()
        .filter(wanted, study_id=study_id)
        .order_by(Collate("stratum", "C"))
    )
    return {row.stratum: row for row in rows}


def _study_occupied(rows: dict[str, AssignmentCounter]) -> dict[str, int]:
    """Occupied slots per arm across the study: the sum over its real arm strata."""
    total: dict[str, int] = {}
    for name, row in rows.items():
        if name in (DOCUMENT_STRATUM, STUDY_ROW) or name.startswith(("pilot/", "preview/")):
            continue
        for key, count in row.state.get("occupied", {}).items():
            total[key] = total.get(key, 0) + count
    return total


def _save(changes: dict[AssignmentCounter, dict[str, Any]]) -> None:
    for row, state in changes.items():
        row.state = state
        row.next_position = state.get("next_position", row.next_position)
    AssignmentCounter.objects.bulk_update(list(changes), ["state", "next_position"])


def _in_transaction(name: str) -> None:
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError(f"{name} must run inside the caller's transaction")


@dataclass(frozen=True)
class Plan:
    """What an allocation reads before it locks anything."""

    conditions: dict[str, Condition]
    arms: Design
    documents: Design
    doc_stratum: str
    strata: dict[str, str]  # document type -> arm stratum
    study_caps: bool


def assignment_plan(participant: Participant) -> Plan:
    """Read the study's arms and document types, check them, and create missing counter rows."""
    study = participant.study
    conditions = list(study.conditions.filter(is_active=True))
    doc_types = sorted(set(study.tasks.values_list("document_type", flat=True)))
    if not conditions:
        raise StudyActionError(
            "no_arms", _("This study has no active arms; please come back later.")
        )
    if not doc_types:
        raise StudyActionError(
            "no_tasks", _("This study has no tasks yet; please come back later.")
        )
    if _problems(study, conditions, doc_types):
        raise StudyActionError(
            "misconfigured", _("This study is not set up correctly yet; please come back later.")
        )
    prefix = _stratum_prefix(participant)
    params = participant.recruiting_params or {}
    strata = {
        doc: arm_stratum(
            stratify_by=study.stratify_by, params=params, document_type=doc, prefix=prefix
        )
        for doc in doc_types
    }
    doc_stratum = prefix + DOCUMENT_STRATUM
    arms = arm_design(study, conditions, caps=not prefix)
    study_caps = arms.caps and any(arm.cap is not None for arm in arms.arms)
    _ensure_rows(study.pk, [doc_stratum, *strata.values(), *([STUDY_ROW] if study_caps else [])])
    return Plan(
        conditions={c.key: c for c in conditions},
        arms=arms,
        documents=document_design(study, doc_types),
        doc_stratum=doc_stratum,
        strata=strata,
        study_caps=study_caps,
    )


def assign_participant(participant: Participant, plan: Plan | None = None) -> Assigned:
    """Allocate a document type and an arm for a consenting participant (caller's transaction).

    Takes the counter locks and writes the counters: call it after every other read of the
    transaction (`plan`, from `assignment_plan`), so that little runs between it and COMMIT.
    """
    _in_transaction("assign_participant")
    plan = plan or assignment_plan(participant)
    if plan.study_caps:
        # Study-wide caps: the study row first, alone, so that capped arrivals take turns; the
        # next statement's snapshot then shows every stratum an earlier one created (a stratum's
        # first arrival inserts its row: a statement that started before that commit would not
        # see the row, nor count the slot taken in it).
        _lock(participant.study_id, [STUDY_ROW])
    # Every row this arrival may touch, the arm strata of all document types included, in one
    # statement; with study-wide caps, every real stratum (its occupancy counts towards them).
    rows = _lock(
        participant.study_id, [plan.doc_stratum, *plan.strata.values()], every_real=plan.study_caps
    )
    doc_row = rows[plan.doc_stratum]
    doc_slot, doc_state = allocate(plan.documents, stratum=plan.doc_stratum, state=doc_row.state)
    stratum = plan.strata[doc_slot.choice]
    arm_row = rows[stratum]
    in_study = _study_occupied(rows) if plan.study_caps else {}
    try:
        slot, arm_state = allocate(
            plan.arms, stratum=stratum, state=arm_row.state, study_occupied=in_study
        )
    except AllocationFull:
        raise StudyActionError(
            "full", _("This study is full; thank you for your interest.")
        ) from None
    _save({doc_row: doc_state, arm_row: arm_state})
    record = {
        "algorithm": ALGORITHM_VERSION,
        "arm": slot.as_record(),
        "document_type": doc_slot.as_record(),
        "arms": [[a.key, a.weight] for a in plan.arms.arms],
        "stratify_by": participant.study.stratify_by,
    }
    return Assigned(slot.choice, doc_slot.choice, record)


def release_slot(participant: Participant, *, reason: str) -> bool:
    """Free the participant's slot for the next arrival where the design reuses slots.

    Returns whether a slot was freed. Idempotent: the allocation record is marked released.
    Runs in the caller's transaction, with the participant row locked.
    """
    _in_transaction("release_slot")
    record = participant.allocation or {}
    if record.get("algorithm") != ALGORITHM_VERSION or record.get("released"):
        return False
    if not participant.study.reuse_slots:
        return False
    arm, doc = record["arm"], record["document_type"]
    study_id = participant.study_id
    # The study's occupancy is the sum over its arm strata: releasing touches only these two.
    rows = _lock(study_id, [doc["stratum"], arm["stratum"]])
    doc_row, arm_row = rows[doc["stratum"]], rows[arm["stratum"]]
    _save(
        {
            doc_row: release(doc_row.state, doc, participant_id=participant.pk),
            arm_row: release(arm_row.state, arm, participant_id=participant.pk),
        }
    )
    released = {"reason": reason, "at": timezone.now().isoformat()}
    participant.allocation = {**record, "released": released}
    participant.save(update_fields=["allocation"])
    event_record(
        study_id=study_id,
        participant_id=participant.pk,
        kind="study.assignment.released",
        payload={
            "algorithm": ALGORITHM_VERSION,
            "reason": reason,
            "arm": arm["choice"],
            "stratum": arm["stratum"],
            "position": arm["position"],
            "document_type": doc["choice"],
        },
    )
    return True
