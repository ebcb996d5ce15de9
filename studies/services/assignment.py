"""Randomised assignment: a pure permuted-block chooser and the locked service that runs it.

Concurrency: each (study, stratum) has one AssignmentCounter row. Taking it FOR UPDATE serialises
allocations of that stratum across processes; the position it hands out, with the study seed, fully
determines the arm, so the sequence is reproducible and no two arrivals share a position.
"""

import hashlib
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from django.db import transaction

from studies.models import AssignmentCounter

ALGORITHM_VERSION = "permuted-blocks/1"


@dataclass(frozen=True)
class Allocation:
    choice: str
    stratum: str
    position: int
    block_index: int
    block_position: int
    block_size: int
    seed: int
    algorithm: str = ALGORITHM_VERSION

    def as_record(self) -> dict:
        """JSON-ready form stored on the participant and in the event log."""
        return asdict(self)


def block_for(
    *, arms: Sequence[tuple[str, int]], block_size: int, seed: int, stratum: str, block_index: int
) -> list[str]:
    """Return one shuffled block: each arm repeated in proportion to its weight."""
    total = sum(weight for _, weight in arms)
    if not arms or block_size % total != 0:
        raise ValueError(f"block size {block_size} is not a multiple of the summed weights {total}")
    reps = block_size // total
    block = [key for key, weight in sorted(arms) for _ in range(weight * reps)]
    digest = hashlib.sha256(f"{seed}:{stratum}:{block_index}".encode()).digest()
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(block)
    return block


def choose(
    *, arms: Sequence[tuple[str, int]], block_size: int, seed: int, stratum: str, position: int
) -> Allocation:
    """Pick the arm for the `position`-th arrival of a stratum (0-based); deterministic."""
    block_index, block_position = divmod(position, block_size)
    block = block_for(
        arms=arms, block_size=block_size, seed=seed, stratum=stratum, block_index=block_index
    )
    return Allocation(
        choice=block[block_position],
        stratum=stratum,
        position=position,
        block_index=block_index,
        block_position=block_position,
        block_size=block_size,
        seed=seed,
    )


def allocation_next(
    *, study_id: int, stratum: str, arms: Sequence[tuple[str, int]], block_size: int, seed: int
) -> Allocation:
    """Take the next position of a stratum under a row lock and choose for it."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("allocation_next must run inside the caller's transaction")
    AssignmentCounter.objects.get_or_create(study_id=study_id, stratum=stratum)
    counter = AssignmentCounter.objects.select_for_update().get(study_id=study_id, stratum=stratum)
    position = counter.next_position
    counter.next_position = position + 1
    counter.save(update_fields=["next_position"])
    return choose(arms=arms, block_size=block_size, seed=seed, stratum=stratum, position=position)


@dataclass(frozen=True)
class Assigned:
    """What consent hands the participant: an arm, a document type and the full record."""

    condition_key: str
    document_type: str
    record: dict


def _stratum_prefix(participant) -> str:
    # Pilot and preview participants draw from their own sequences: they never move real balance.
    if participant.is_preview:
        return "preview/"
    if participant.is_pilot:
        return "pilot/"
    return ""


def assign_participant(participant) -> Assigned:
    """Allocate a document type and an arm for a consenting participant (caller's transaction).

    Interim implementation (fixed permuted blocks, no strata, caps or slot reuse); the full
    designs replace it behind the same signature.
    """
    from studies.services.errors import StudyActionError

    study = participant.study
    arms = [(c.key, c.weight) for c in study.conditions.filter(is_active=True)]
    if not arms:
        raise StudyActionError("no_arms", "This study has no active arms; please come back later.")
    doc_types = sorted(set(study.tasks.values_list("document_type", flat=True)))
    if not doc_types:
        raise StudyActionError("no_tasks", "This study has no tasks yet; please come back later.")
    prefix = _stratum_prefix(participant)
    doc = allocation_next(
        study_id=study.pk,
        stratum=prefix + "document_type",
        arms=[(d, 1) for d in doc_types],
        block_size=len(doc_types),
        seed=study.seed,
    )
    arm = allocation_next(
        study_id=study.pk,
        stratum=prefix + "all",
        arms=arms,
        block_size=study.block_size,
        seed=study.seed,
    )
    record = {
        "arm": arm.as_record(),
        "document_type": doc.as_record(),
        "arms": [list(a) for a in arms],
    }
    return Assigned(arm.choice, doc.choice, record)


def release_slot(participant, *, reason: str) -> bool:
    """Free the participant's slot for the next arrival where the design reuses slots.

    Returns whether a slot was freed. Idempotent. Interim: never frees.
    """
    return False
