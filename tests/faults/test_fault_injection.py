"""The fault-injection suite, short form: a few participants chat through ~30 injected faults.

The platform runs as separate processes on a PostgreSQL and a Redis of its own (tests/faults/
harness.py); the long form is benchmarks/fault_injection.py. Nothing a participant sent or saw may
be silently lost, truncated or duplicated.
"""

import pytest

from tests.faults.harness import WEIGHTS, FaultConfig, fault_run, report_table

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


async def test_no_message_is_lost_truncated_or_duplicated_through_injected_faults():
    config = FaultConfig(faults=30, participants=3, seed=11, max_seconds=200, settle_seconds=60)
    report = await fault_run(config)
    print(report_table(report))

    assert report["total_faults"] >= 30
    # Every kind of fault happened at least once, so each one was survived, not skipped.
    assert set(report["faults"]) == set(WEIGHTS)
    audit = report["audit"]
    assert audit["turns"] > 0 and audit["complete"] > 0
    assert audit["visibly_failed"] > 0  # the model faults were shown, so the audit can see them
    assert report["findings"] == []
    assert (audit["silently_lost"], audit["truncated"], audit["duplicated"]) == (0, 0, 0)
    assert report["streaming_rows_left"] == 0
    # Each participant finished its last turn: no one was left waiting on a reply forever.
    assert [p["gave_up"] for p in report["participants"]] == [""] * 3
