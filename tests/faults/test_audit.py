"""The fault auditor's rules on hand-made rows: what counts as lost, truncated or duplicated."""

import random

from tests.faults.audit import Audit, Row, _audit_one, _finished_by_model, expected_text
from tests.faults.participant import Reply, Sent, SimParticipant
from tests.faults.services import ModelRequest

WHOLE = expected_text(5)
KEY = "0123abcd-0000-4000-8000-000000000000"


def participant(*replies: Reply) -> SimParticipant:
    p = SimParticipant(0, ["ws://x"], "http://x", "", 8.0, random.Random(0))
    p.sent[KEY] = Sent(KEY, "hello", acked=True, user_id=1, turn=1)
    p.replies = {r.id: r for r in replies}
    return p


def user_row(key: str = KEY, pk: int = 1) -> Row:
    return Row(pk, 1, "user", 1, "complete", "hello", key, 100.0)


def reply_row(pk: int, status: str, content: str, attempt: int = 1, created: float = 100.0) -> Row:
    return Row(pk, 1, "assistant", attempt, status, content, None, created)


def shown(pk: int, status: str, text: str, *, slot: int = 0, at: float = 100.0) -> Reply:
    reply = Reply(pk, 1, slot, at)
    reply.see(text, status)
    return reply


def audit(p: SimParticipant, rows: list[Row], kills=(), finished=frozenset(), ratings=()) -> Audit:
    result = Audit()
    _audit_one(result, p, rows, list(ratings), WHOLE, list(kills), set(finished))
    return result


def test_a_complete_reply_stored_whole_is_clean():
    p = participant(shown(2, "complete", WHOLE))
    result = audit(p, [user_row(), reply_row(2, "complete", WHOLE)], finished={2})
    assert (result.turns, result.complete, result.findings) == (1, 1, [])


def test_an_acked_turn_without_a_reply_or_a_failure_never_shown_is_silently_lost():
    assert audit(participant(), [user_row()]).silently_lost == 1
    unseen = audit(participant(), [user_row(), reply_row(2, "interrupted", "tok0")])
    assert unseen.silently_lost == 1
    streaming = audit(participant(), [user_row(), reply_row(2, "streaming", "tok0")])
    assert streaming.silently_lost == 1


def test_a_failure_the_model_finished_is_truncated_unless_its_web_process_was_killed():
    p = participant(shown(2, "interrupted", "tok0 tok1", slot=1, at=100.0))
    rows = [user_row(), reply_row(2, "interrupted", "tok0 tok1")]
    assert audit(p, rows, finished={2}).truncated == 1
    killed = audit(p, rows, kills=[(1, 101.0)], finished={2})
    assert (killed.truncated, killed.visibly_failed) == (0, 1)
    other_slot = audit(p, rows, kills=[(0, 101.0)], finished={2})
    assert other_slot.truncated == 1


def test_stored_shorter_than_shown_is_truncated_and_a_crash_only_costs_the_checkpoint_window():
    reply = shown(2, "streaming", "tok0 tok1 tok2", slot=0, at=100.0)
    reply.see("tok0", "interrupted")
    rows = [user_row(), reply_row(2, "interrupted", "tok0")]
    assert audit(participant(reply), rows).truncated == 1
    crash = audit(participant(reply), rows, kills=[(0, 100.5)])
    assert (crash.truncated, crash.crash_window, crash.crash_window_chars) == (0, 1, 10)


def test_a_reply_shown_complete_but_stored_failed_is_lost_and_a_changed_text_truncated():
    p = participant(shown(2, "complete", WHOLE))
    assert audit(p, [user_row(), reply_row(2, "failed", WHOLE)]).silently_lost == 1
    assert audit(p, [user_row(), reply_row(2, "complete", "tok0 tok1")]).truncated == 1


def test_duplicates_are_counted_per_key_turn_and_rating():
    p = participant(shown(2, "complete", WHOLE), shown(3, "complete", WHOLE))
    rows = [
        user_row(),
        user_row(pk=4),
        reply_row(2, "complete", WHOLE),
        reply_row(3, "complete", WHOLE, attempt=2),
    ]
    result = audit(p, rows, ratings=[(3, 2)])
    # two rows for the key, two user messages in turn 1, two complete replies, two ratings
    assert result.duplicated == 4


def test_a_whole_model_reply_belongs_to_the_latest_attempt_made_before_it_started():
    p = participant()
    rows = [
        reply_row(2, "failed", "", attempt=1, created=100.0),
        reply_row(3, "complete", WHOLE, attempt=2, created=105.0),
    ]
    prompt = f"Participant 0, turn 1 ({KEY[:8]}): please"
    requests = [
        ModelRequest(prompt, 100.1, fault="500"),
        ModelRequest(prompt, 105.1, whole=True),
        ModelRequest(f"Participant 1, turn 1 ({KEY[:8]}): please", 105.2, whole=True),
    ]
    assert _finished_by_model(p, rows, requests) == {3}
