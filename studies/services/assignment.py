"""Randomised assignment: a pure allocator over JSON state, and the locked service that runs it.

The allocator (`allocate`, `release`) is a small state machine over one stratum's JSON state (next
position, current block, occupied slots per arm, freed slots). It never touches the database, so
`preview_design` simulates exactly what production does. Blocks are deterministic from (study
seed, stratum, block index); least-filled picks break ties by a seeded hash.

Concurrency: every allocation and every release locks the AssignmentCounter rows it may touch
(the study row "study": occupancy across strata, for caps; the document-type stratum; the arm
strata) FOR UPDATE in one statement, in one global order (stratum names, bytewise). One order
everywhere means no deadlocks; the locks serialise a study's arrivals across processes, so no two
arrivals share a slot. Pilot and preview participants use
their own rows ("pilot/", "preview/"): they never move real balance or caps.
"""

import copy
import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import Any

from django.db import transaction
from django.db.models.functions import Collate
from django.utils import timezone

from studies.models import AssignmentCounter, Condition, Participant, Study
from studies.services.errors import StudyActionError
from studies.services.events import event_record

ALGORITHM_VERSION = "allocation/2"
PERMUTED_BLOCKS = "permuted_blocks"
LEAST_FILLED = "least_filled"
STUDY_ROW = "study"
DOCUMENT_STRATUM = "document_type"
STRATUM_MAX_CHARS = 120  # AssignmentCounter.stratum


class AllocationFull(Exception):
    """Every arm of the stratum is at its cap."""


@dataclass(frozen=True)
class Arm:
    key: str
    weight: int = 1
    cap: int | None = None
    cap_per_stratum: int | None = None


@dataclass(frozen=True)
class Design:
    """What the allocator needs to know about a study (or about its document types)."""

    arms: tuple[Arm, ...]
    seed: int
    kind: str = PERMUTED_BLOCKS
    block_sizes: tuple[int, ...] = (6,)
    reuse_slots: bool = True
    caps: bool = True


@dataclass(frozen=True)
class Slot:
    """One allocated slot; its record is stored on the participant and in the event log."""

    choice: str
    stratum: str
    position: int
    block_index: int | None
    block_position: int | None
    block_size: int | None
    seed: int
    design: str
    cap_fallback: bool = False
    reused_from: int | None = None
    algorithm: str = ALGORITHM_VERSION

    def as_record(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


SLOT_FIELDS = tuple(f.name for f in fields(Slot))


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def block_size_for(*, sizes: Sequence[int], seed: int, stratum: str, block_index: int) -> int:
    """The size of one block: fixed, or drawn from `sizes` (seeded by stratum and block index)."""
    if len(sizes) == 1:
        return sizes[0]
    return _rng(seed, stratum, block_index, "size").choice(sorted(sizes))


def block_for(
    *, arms: Sequence[tuple[str, int]], block_size: int, seed: int, stratum: str, block_index: int
) -> list[str]:
    """Return one shuffled block: each arm repeated in proportion to its weight."""
    total = sum(weight for _, weight in arms)
    if not arms or block_size % total != 0:
        raise ValueError(f"block size {block_size} is not a multiple of the summed weights {total}")
    reps = block_size // total
    block = [key for key, weight in sorted(arms) for _ in range(weight * reps)]
    _rng(seed, stratum, block_index).shuffle(block)
    return block


def least_filled(
    *, arms: Sequence[Arm], occupied: Mapping[str, int], seed: int, stratum: str, position: int
) -> str:
    """The arm with the fewest occupied slots per unit of weight; ties broken by a seeded hash."""

    def rank(arm: Arm) -> tuple[Fraction, bytes]:
        tie = hashlib.sha256(f"{seed}:{stratum}:{position}:{arm.key}".encode()).digest()
        return Fraction(occupied.get(arm.key, 0), arm.weight), tie

    return min(arms, key=rank).key


def fresh_state() -> dict[str, Any]:
    """The state of a stratum nobody has arrived in yet."""
    return {
        "next_position": 0,
        "block_index": -1,
        "block": [],
        "block_position": 0,
        "occupied": {},
        "freed": [],
    }


def _state(state: Mapping[str, Any] | None) -> dict[str, Any]:
    return {**fresh_state(), **copy.deepcopy(dict(state or {}))}


def _capped(design: Design, arm: Arm, occupied: Mapping, study_occupied: Mapping) -> bool:
    if not design.caps:
        return False
    if arm.cap is not None and study_occupied.get(arm.key, 0) >= arm.cap:
        return True
    return arm.cap_per_stratum is not None and occupied.get(arm.key, 0) >= arm.cap_per_stratum


def allocate(
    design: Design,
    *,
    stratum: str,
    state: Mapping[str, Any] | None,
    study_occupied: Mapping[str, int] | None = None,
) -> tuple[Slot, dict[str, Any]]:
    """Choose the next arrival's slot in `stratum`; return it and the new state (pure).

    Order: the oldest freed slot of an open arm (when the design reuses slots), else the next
    position of the current permuted block (or least-filled); an arm at its cap falls back to
    least-filled among open arms. Raises AllocationFull when every arm is capped.
    """
    new = _state(state)
    occupied = new["occupied"]
    open_arms = [a for a in design.arms if not _capped(design, a, occupied, study_occupied or {})]
    if not open_arms:
        raise AllocationFull(stratum)
    slot = _take_freed(design, new, open_arms) or _take_new(design, stratum, new, open_arms)
    occupied[slot.choice] = occupied.get(slot.choice, 0) + 1
    return slot, new


def _take_freed(design: Design, state: dict[str, Any], open_arms: list[Arm]) -> Slot | None:
    if not design.reuse_slots:
        return None
    keys = {a.key for a in open_arms}
    for i, entry in enumerate(state["freed"]):
        if entry["choice"] in keys:
            del state["freed"][i]
            kept = {k: entry[k] for k in SLOT_FIELDS if k in entry}
            return Slot(**{**kept, "reused_from": entry["participant"]})
    return None


def _take_new(design: Design, stratum: str, state: dict[str, Any], open_arms: list[Arm]) -> Slot:
    position = state["next_position"]
    state["next_position"] = position + 1
    pick = {"arms": open_arms, "occupied": state["occupied"], "seed": design.seed}
    if design.kind == LEAST_FILLED:
        choice = least_filled(**pick, stratum=stratum, position=position)
        return Slot(choice, stratum, position, None, None, None, design.seed, design.kind)
    if state["block_position"] >= len(state["block"]):
        index = state["block_index"] + 1
        size = block_size_for(
            sizes=design.block_sizes, seed=design.seed, stratum=stratum, block_index=index
        )
        arms = [(a.key, a.weight) for a in design.arms]
        block = block_for(
            arms=arms, block_size=size, seed=design.seed, stratum=stratum, block_index=index
        )
        state.update(block_index=index, block=block, block_position=0)
    block_position = state["block_position"]
    state["block_position"] = block_position + 1
    choice = state["block"][block_position]
    # The block is stored, so an arm deactivated mid-block is treated like a capped one.
    fallback = choice not in {a.key for a in open_arms}
    if fallback:
        choice = least_filled(**pick, stratum=stratum, position=position)
    return Slot(
        choice, stratum, position, state["block_index"], block_position, len(state["block"]),
        design.seed, design.kind, cap_fallback=fallback,
    )  # fmt: skip


def release(
    state: Mapping[str, Any] | None, record: Mapping[str, Any], *, participant_id: int
) -> dict[str, Any]:
    """Return the state with `record`'s slot freed: its arm's count drops, it joins the queue."""
    new = _state(state)
    _decrement(new["occupied"], record["choice"])
    new["freed"].append({**{k: record.get(k) for k in SLOT_FIELDS}, "participant": participant_id})
    return new


def _decrement(occupied: dict[str, int], key: str) -> None:
    occupied[key] = max(0, occupied.get(key, 0) - 1)


def imbalance(counts: Mapping[str, int], weights: Mapping[str, int]) -> float:
    """Largest minus smallest count per unit of weight (max - min for equal weights)."""
    per_weight = [counts.get(key, 0) / weight for key, weight in weights.items()]
    return max(per_weight) - min(per_weight) if per_weight else 0.0


def _fit(label: str) -> str:
    if len(label) <= STRATUM_MAX_CHARS:
        return label
    digest = hashlib.sha256(label.encode()).hexdigest()[:8]
    return f"{label[: STRATUM_MAX_CHARS - 9]}~{digest}"


def arm_stratum(
    *, stratify_by: str, params: Mapping[str, Any], document_type: str, prefix: str = ""
) -> str:
    """The arm stratum: "all", "document_type=<type>" or "<NAME>=<value or 'unknown'>"."""
    if stratify_by == "document_type":
        label = f"document_type={document_type}"
    elif stratify_by.startswith("param:"):
        name = stratify_by.removeprefix("param:")
        value = str(params.get(name) or "").strip() or "unknown"
        label = f"{name}={value}"
    else:
        label = "all"
    return _fit(prefix + label)


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
        raise StudyActionError("no_arms", "This study has no active arms; please come back later.")
    if not doc_types:
        raise StudyActionError("no_tasks", "This study has no tasks yet; please come back later.")
    if _problems(study, conditions, doc_types):
        raise StudyActionError(
            "misconfigured", "This study is not set up correctly yet; please come back later."
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
        raise StudyActionError("full", "This study is full; thank you for your interest.") from None
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
