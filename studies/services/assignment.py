"""Randomised assignment: the locked service around the pure allocator (`allocation`).

Concurrency: every allocation and every release locks the AssignmentCounter rows it may touch
(the study row "study": occupancy across strata, for caps; the document-type stratum; the arm
strata) FOR UPDATE in one statement, in one global order (stratum names, bytewise). One order
everywhere means no deadlocks; the locks serialise a study's arrivals across processes, so no two
arrivals share a slot. Pilot and preview participants use
their own rows ("pilot/", "preview/"): they never move real balance or caps.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction
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


def _lock(study_id: int, strata: Sequence[str]) -> dict[str, AssignmentCounter]:
    """Lock the counter rows of `strata` FOR UPDATE in one statement, creating missing ones."""
    names = sorted(set(strata))
    rows = _select_locked(study_id, names)
    if len(rows) < len(names):
        # INSERT ... ON CONFLICT DO NOTHING: a concurrent first arrival may be creating the same
        # row; get_or_create would raise IntegrityError and abort the caller's transaction.
        missing = [AssignmentCounter(study_id=study_id, stratum=n) for n in names if n not in rows]
        AssignmentCounter.objects.bulk_create(missing, ignore_conflicts=True)
        rows = _select_locked(study_id, names)
    return rows


def _select_locked(study_id: int, names: list[str]) -> dict[str, AssignmentCounter]:
    # Rows are locked in ORDER BY order, and "C" collation is the code-point order of sorted():
    # one global order in every transaction, so two of them never wait for each other in a cycle.
    rows = (
        AssignmentCounter.objects.select_for_update()
        .filter(study_id=study_id, stratum__in=names)
        .order_by(Collate("stratum", "C"))
    )
    return {row.stratum: row for row in rows}


def _save(changes: dict[AssignmentCounter, dict[str, Any]]) -> None:
    for row, state in changes.items():
        row.state = state
        row.next_position = state.get("next_position", row.next_position)
    AssignmentCounter.objects.bulk_update(list(changes), ["state", "next_position"])


def _counted(row: AssignmentCounter, key: str, delta: int) -> dict[str, Any]:
    occupied = dict(row.state.get("occupied", {}))
    occupied[key] = max(0, occupied.get(key, 0) + delta)
    allocations = row.state.get("allocations", 0) + max(delta, 0)
    return {**row.state, "occupied": occupied, "allocations": allocations}


def _in_transaction(name: str) -> None:
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError(f"{name} must run inside the caller's transaction")


def assign_participant(participant: Participant) -> Assigned:
    """Allocate a document type and an arm for a consenting participant (caller's transaction)."""
    _in_transaction("assign_participant")
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
    # Every row this arrival may touch, the arm strata of all document types included, in one
    # statement: pilots and previews never lock (or count in) the study row.
    rows = _lock(study.pk, [doc_stratum, *strata.values(), *([] if prefix else [STUDY_ROW])])
    doc_row, study_row = rows[doc_stratum], rows.get(STUDY_ROW)
    doc_slot, doc_state = allocate(
        document_design(study, doc_types), stratum=doc_stratum, state=doc_row.state
    )
    stratum = strata[doc_slot.choice]
    arm_row = rows[stratum]
    design = arm_design(study, conditions, caps=not prefix)
    in_study = study_row.state.get("occupied", {}) if study_row else {}
    try:
        slot, arm_state = allocate(
            design, stratum=stratum, state=arm_row.state, study_occupied=in_study
        )
    except AllocationFull:
        raise StudyActionError(
            "full", _("This study is full; thank you for your interest.")
        ) from None
    changes = {doc_row: doc_state, arm_row: arm_state}
    if study_row is not None:
        changes[study_row] = _counted(study_row, slot.choice, +1)
    _save(changes)
    record = {
        "algorithm": ALGORITHM_VERSION,
        "arm": slot.as_record(),
        "document_type": doc_slot.as_record(),
        "arms": [[a.key, a.weight] for a in design.arms],
        "stratify_by": study.stratify_by,
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
    strata = [doc["stratum"], arm["stratum"]]
    rows = _lock(study_id, strata if _stratum_prefix(participant) else [*strata, STUDY_ROW])
    doc_row, arm_row, study_row = rows[doc["stratum"]], rows[arm["stratum"]], rows.get(STUDY_ROW)
    changes = {
        doc_row: release(doc_row.state, doc, participant_id=participant.pk),
        arm_row: release(arm_row.state, arm, participant_id=participant.pk),
    }
    if study_row is not None:
        changes[study_row] = _counted(study_row, arm["choice"], -1)
    _save(changes)
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
