"""The auditor: what each simulated participant sent and saw, held against the database.

- silently lost: an acknowledged message with no row; an acknowledged turn with no reply row or a
  reply still `streaming` after the run; a failed/interrupted reply the participant was never
  shown as failed; a reply shown complete (or shown whole, every token the model produced) that is
  not stored complete.
- truncated: a complete reply whose stored text is not the model's whole text (the fake's replies
  are deterministic: "tok0 tok1 ... tok{N-1}") or not what the `complete` frame showed; a failed
  reply stored shorter than the participant saw it. The one exception is by design (DESIGN.md):
  a reply whose web process was killed while it streamed keeps its last checkpoint, so up to one
  checkpoint interval of text is gone; those are counted apart as `crash_window`.
- duplicated: two rows for one idempotency key, two complete replies (or two user messages) for one
  turn, two ratings for one checkpoint.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple

import psycopg

from tests.faults.participant import TAG, Reply, SimParticipant
from tests.faults.services import ModelRequest


@dataclass
class Audit:
    turns: int = 0  # acknowledged user messages
    complete: int = 0  # of those turns: a complete reply is stored
    replies: int = 0  # assistant rows
    model_finished: int = 0  # of those: the model sent the whole reply (traced by request)
    visibly_failed: int = 0  # failed/interrupted rows the participant was shown as such
    crash_window: int = 0  # of those: a killed web process lost its last checkpoint interval
    crash_window_chars: int = 0
    silently_lost: int = 0
    truncated: int = 0
    duplicated: int = 0
    findings: list[str] = field(default_factory=list)
    t0: float = 0.0

    def add(self, kind: str, who: int, what: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        self.findings.append(f"{kind}: participant {who}: {what}")


class Row(NamedTuple):
    """One studies_message row, as the auditor reads it."""

    id: int
    turn: int
    role: str
    attempt: int
    status: str
    content: str
    key: str | None
    created: float  # epoch seconds


def expected_text(tokens: int) -> str:
    return " ".join(f"tok{i}" for i in range(tokens))


def _crash_hit(reply: Reply, kills: list[tuple[int, float]]) -> bool:
    """Whether the web process generating `reply` was killed while the reply was unfinished."""
    return any(
        slot == reply.slot
        and reply.requested_at <= at
        and (reply.final_at is None or at <= reply.final_at)
        for slot, at in kills
    )


def _finished_by_model(
    p: SimParticipant, rows: list[Row], requests: list[ModelRequest]
) -> set[int]:
    """Ids of the reply rows whose model request sent the whole reply.

    A request belongs to the latest attempt of its turn (found by the tag in the participant's
    message) created before the request started: each attempt's row is written, then its request
    goes out, and the next attempt is made only after this one has ended.
    """
    turn_of = {key[:8]: s.turn for key, s in p.sent.items() if s.turn is not None}
    attempts: dict[int, list[Row]] = defaultdict(list)
    for r in rows:
        if r.role == "assistant":
            attempts[r.turn].append(r)
    finished = set()
    for request in requests:
        match = TAG.search(request.prompt)
        if not request.whole or match is None or match.group(1) != str(p.index):
            continue
        turn = turn_of.get(match.group(2))
        earlier = [r for r in attempts.get(turn or -1, []) if r.created <= request.started + 0.05]
        if earlier:
            finished.add(max(earlier, key=lambda r: r.created).id)
    return finished


def audit_run(
    database_url: str,
    participants: list[SimParticipant],
    *,
    tokens: int,
    kills: list[tuple[int, float]],
    requests: list[ModelRequest],
    t0: float = 0.0,
) -> Audit:
    """Audit every participant; `t0` (epoch seconds) dates findings like the fault timeline."""
    audit = Audit(t0=t0)
    whole = expected_text(tokens)
    with psycopg.connect(database_url) as conn:
        for p in participants:
            user_ids = [s.user_id for s in p.sent.values() if s.user_id is not None]
            if not user_ids:
                continue
            owners = conn.execute(
                "SELECT DISTINCT participant_id FROM studies_message WHERE id = ANY(%s)",
                [user_ids],
            ).fetchall()
            for (owner,) in owners:
                rows = [
                    Row(*r)
                    for r in conn.execute(
                        "SELECT id, turn_index, role, attempt, status, content,"
                        " idempotency_key::text, extract(epoch FROM created_at)::float"
                        " FROM studies_message"
                        " WHERE participant_id = %s ORDER BY id",
                        [owner],
                    )
                ]
                ratings = conn.execute(
                    "SELECT after_turn, count(*) FROM studies_turnrating"
                    " WHERE participant_id = %s GROUP BY after_turn",
                    [owner],
                ).fetchall()
                finished = _finished_by_model(p, rows, requests)
                audit.model_finished += len(finished)
                _audit_one(audit, p, rows, ratings, whole, kills, finished)
    return audit


def _audit_one(
    audit: Audit,
    p: SimParticipant,
    rows: list[Row],
    ratings: list[tuple[int, int]],
    whole: str,
    kills: list[tuple[int, float]],
    finished: set[int],
) -> None:
    by_key: Counter[str | None] = Counter(r.key for r in rows if r.role == "user")
    users_per_turn: Counter[int] = Counter(r.turn for r in rows if r.role == "user")
    assistant: dict[int, list[Row]] = defaultdict(list)
    for r in rows:
        if r.role == "assistant":
            assistant[r.turn].append(r)
    audit.replies += sum(len(v) for v in assistant.values())
    for after_turn, count in ratings:
        if count > 1:
            audit.add("duplicated", p.index, f"{count} ratings after turn {after_turn}")
    for turn, count in users_per_turn.items():
        if count > 1:
            audit.add("duplicated", p.index, f"{count} user messages in turn {turn}")
    for sent in p.sent.values():
        if not sent.acked:
            continue
        audit.turns += 1
        if by_key[sent.key] == 0:
            audit.add("silently_lost", p.index, f"acked message {sent.key} has no row")
        elif by_key[sent.key] > 1:
            audit.add("duplicated", p.index, f"{by_key[sent.key]} rows for key {sent.key}")
        replies = assistant.get(sent.turn or -1, [])
        if not replies:
            audit.add("silently_lost", p.index, f"turn {sent.turn} has no reply row")
            continue
        completes = [r for r in replies if r.status == "complete"]
        if completes:
            audit.complete += 1
        if len(completes) > 1:
            audit.add("duplicated", p.index, f"{len(completes)} complete replies, turn {sent.turn}")
        for row in replies:
            _audit_reply(audit, p, row, whole, kills, row.id in finished)


def _audit_reply(
    audit: Audit,
    p: SimParticipant,
    row: Row,
    whole: str,
    kills: list[tuple[int, float]],
    finished: bool,
) -> None:
    status, content = row.status, row.content
    seen = p.replies.get(row.id)
    where = (
        f"turn {row.turn} attempt {row.attempt} (message {row.id}, "
        f"made at {row.created - audit.t0:+.1f} s)"
    )
    if status == "complete":
        if content != whole:
            audit.add("truncated", p.index, f"{where} stored complete with {len(content)} chars")
        elif seen is not None and seen.complete_text not in (None, content):
            audit.add("truncated", p.index, f"{where} shown complete differently")
        return
    if status == "streaming":
        audit.add("silently_lost", p.index, f"{where} still streaming after the run")
        return
    if seen is None or not seen.failure_seen:
        audit.add("silently_lost", p.index, f"{where} {status}, never shown as failed")
        return
    if seen.complete_text is not None:
        audit.add("silently_lost", p.index, f"{where} shown complete, stored {status}")
        return
    audit.visibly_failed += 1
    crash = _crash_hit(seen, kills)
    if finished and not crash:
        audit.add(
            "truncated", p.index, f"{where} {status} ({len(content)} chars stored) although "
            f"the model sent the whole reply (error shown: {seen.text[:40]!r})"
        )  # fmt: skip
        return
    if len(seen.shown) > len(content):
        lost = len(seen.shown) - len(content)
        if crash:
            audit.crash_window += 1
            audit.crash_window_chars += lost
        else:
            audit.add(
                "truncated", p.index, f"{where} {status}: shown {len(seen.shown)} chars, "
                f"stored {len(content)} (error shown: {seen.text[:40]!r})"
            )  # fmt: skip
    elif seen.shown == whole and not crash:
        audit.add("silently_lost", p.index, f"{where} shown whole, stored {status}")
