"""The pure allocator: a small state machine over one stratum's JSON state; no database.

State: next position, the current block (index, position, size, the block itself), occupied slots
per arm and a queue of freed slots. Blocks are deterministic from (study seed, stratum, block
index); least-filled picks break ties by a seeded hash. `studies.services.assignment` runs it
under row locks; `preview_design` runs it in memory, so a preview is exactly what production does.
"""

import copy
import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import Any

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
        # Participants can edit URLs: "US", " us" and "us" are one stratum.
        value = " ".join(str(params.get(name) or "").split()).casefold() or "unknown"
        label = f"{name}={value}"
    else:
        label = "all"
    return _fit(prefix + label)
