"""Assignment under concurrent arrivals, through the real entry path and real PostgreSQL.

Threads stand in for web processes: each has its own database connection (not one from the test
process's pool, which would bound them), and all start at a barrier. At most ~40 threads run at
once (PostgreSQL allows 100 connections for the whole suite).
"""

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence

import pytest
from django.db import connection, connections, transaction
from django.test import Client
from django.urls import reverse

from studies.models import AssignmentCounter, Participant, Study
from studies.services import allocation, outcomes
from studies.services import participants as svc
from studies.services.errors import StudyActionError
from tests.factories import ParticipantFactory, three_arm_study

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _a_connection_per_thread() -> Iterator[None]:
    """Plain connections while these tests run: each thread opens and closes its own."""
    options = connection.settings_dict["OPTIONS"]
    connection.close()
    connection.close_pool()
    pool = options.pop("pool", None)
    yield
    connections.close_all()
    if pool is not None:
        options["pool"] = pool


ARRIVALS = 200
DISTINCT = 180  # the other 20 arrivals reuse an id that arrives at the same moment
THREADS = 40


def in_threads(jobs: Sequence[Callable[[], object]], threads: int = THREADS) -> list[object]:
    """Run the jobs on `threads` threads that start together; return results, raise any error."""
    chunks = [jobs[i::threads] for i in range(threads)]
    chunks = [chunk for chunk in chunks if chunk]
    barrier = threading.Barrier(len(chunks))
    results: list[object] = []
    errors: list[BaseException] = []

    def work(chunk: Sequence[Callable[[], object]]) -> None:
        try:
            barrier.wait()
            for job in chunk:
                results.append(job())
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    pool = [threading.Thread(target=work, args=(chunk,)) for chunk in chunks]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if errors:
        raise errors[0]
    return results


def arrival_ids(seed: int = 0) -> list[str]:
    """200 Prolific ids, 10 % of them a second arrival of the id just before it."""
    ids = [f"pid{i:03d}" for i in range(DISTINCT)]
    repeated = set(random.Random(seed).sample(range(DISTINCT), ARRIVALS - DISTINCT))
    # Neighbours in the list start together on different threads, so the duplicate races.
    return [x for i, pid in enumerate(ids) for x in ([pid, pid] if i in repeated else [pid])]


def arrive(study: Study, pid: str) -> int:
    """One browser: open the recruiting link and agree to the consent form."""
    client = Client()
    params = {"PROLIFIC_PID": pid, "STUDY_ID": "s1", "SESSION_ID": f"sess-{pid}"}
    client.get(reverse("studies:entry", args=[study.slug]), params)
    return client.post(
        reverse("studies:consent", args=[study.slug]), {"choice": "agree"}
    ).status_code


def prolific_study(**kwargs) -> Study:
    return three_arm_study(recruiting_source=Study.Source.PROLIFIC, **kwargs)


def arms_by_stratum(study: Study) -> dict[str, Counter]:
    strata: dict[str, Counter] = defaultdict(Counter)
    for p in Participant.objects.filter(study=study).exclude(allocation={}):
        if not p.allocation.get("released"):
            strata[p.allocation["arm"]["stratum"]][p.allocation["arm"]["choice"]] += 1
    return strata


def worst_imbalance(study: Study) -> int:
    arms = ["base", "proactive", "collabllm"]
    return max(
        max(c[a] for a in arms) - min(c[a] for a in arms) for c in arms_by_stratum(study).values()
    )


def assert_one_slot_each(study: Study, ids: Sequence[str]) -> None:
    people = list(Participant.objects.filter(study=study))
    assert sorted(p.external_id for p in people) == sorted(f"prolific:{x}" for x in set(ids))
    assert all(p.status == Participant.Status.CONSENTED for p in people)
    positions = Counter(
        (p.allocation["arm"]["stratum"], p.allocation["arm"]["position"]) for p in people
    )
    assert max(positions.values()) == 1
    docs = Counter(p.allocation["document_type"]["position"] for p in people)
    assert max(docs.values()) == 1


def test_200_concurrent_arrivals_with_duplicates_are_balanced_and_assigned_once():
    study = prolific_study(block_size=3)
    ids = arrival_ids()
    codes = in_threads([lambda pid=pid: arrive(study, pid) for pid in ids])
    assert set(codes) <= {200, 302}
    assert_one_slot_each(study, ids)
    assert worst_imbalance(study) <= 1
    assert AssignmentCounter.objects.get(study=study, stratum="all").next_position == DISTINCT


def test_200_concurrent_arrivals_stratified_by_document_type_are_balanced_per_stratum():
    study = prolific_study(block_size=3, stratify_by="document_type")
    ids = arrival_ids(seed=1)
    in_threads([lambda pid=pid: arrive(study, pid) for pid in ids])
    assert_one_slot_each(study, ids)
    strata = arms_by_stratum(study)
    assert len(strata) == 3 and sum(sum(c.values()) for c in strata.values()) == DISTINCT
    assert worst_imbalance(study) <= 1


def test_concurrent_arrivals_never_push_an_arm_past_its_cap():
    study = prolific_study(block_size=3)
    study.conditions.filter(key="base").update(cap=10)
    study.conditions.exclude(key="base").update(cap=20)
    ids = [f"cap{i}" for i in range(80)]
    in_threads([lambda pid=pid: arrive(study, pid) for pid in ids])
    counts = Counter(
        Participant.objects.filter(study=study, status="consented").values_list(
            "condition__key", flat=True
        )
    )
    assert counts == {"base": 10, "proactive": 20, "collabllm": 20}
    assert Participant.objects.filter(study=study, status="entered").count() == 30


def test_a_capped_arrival_counts_a_new_stratum_opened_while_it_waits():
    """The first arrival of a stratum creates its counter row; a capped arrival of another
    stratum that waits for it must still count the slot it took, or the cap is overrun."""
    study = prolific_study(block_size=3, stratify_by="param:STUDY_ID")
    study.conditions.update(cap=1)
    for _ in range(2):
        uk = ParticipantFactory(study=study, recruiting_params={"STUDY_ID": "uk"})
        svc.participant_consent(participant_id=uk.pk)
    first_fr = ParticipantFactory(study=study, recruiting_params={"STUDY_ID": "fr"})
    late_uk = ParticipantFactory(study=study, recruiting_params={"STUDY_ID": "uk"})
    refused: list[str] = []

    def late() -> None:
        try:
            svc.participant_consent(participant_id=late_uk.pk)
        except StudyActionError as exc:
            refused.append(exc.code)
        finally:
            connection.close()

    release_when_waiting(
        lambda: svc.participant_consent(participant_id=first_fr.pk), waiters=1, start=late
    )
    counts = Counter(
        Participant.objects.filter(study=study, status="consented").values_list(
            "condition__key", flat=True
        )
    )
    assert counts == {"base": 1, "proactive": 1, "collabllm": 1}
    assert refused == ["full"]


def test_slots_freed_by_concurrent_returns_go_to_concurrent_newcomers_once_each():
    study = prolific_study(block_size=3)
    first = [f"first{i}" for i in range(60)]
    in_threads([lambda pid=pid: arrive(study, pid) for pid in first])
    leaving = list(Participant.objects.filter(study=study).order_by("pk"))[::3]
    ends = [
        lambda p=p: outcomes.participant_end(participant_id=p.pk, outcome="returned")
        for p in leaving
    ]
    in_threads(ends, threads=20)
    newcomers = [f"new{i}" for i in range(20)]
    in_threads([lambda pid=pid: arrive(study, pid) for pid in newcomers], threads=20)
    reused = [
        p.allocation["arm"]["reused_from"]
        for p in Participant.objects.filter(study=study, external_id__startswith="prolific:new")
    ]
    assert sorted(reused) == sorted(p.pk for p in leaving)
    assert AssignmentCounter.objects.get(study=study, stratum="all").next_position == 60
    assert worst_imbalance(study) <= 1


# --- regression: why not `ORDER BY count LIMIT 1 FOR UPDATE` ---------------------------------

NAIVE = """
    SELECT id, stratum FROM studies_assignmentcounter
    WHERE study_id = %s AND stratum LIKE 'naive:%%'
    ORDER BY next_position, stratum LIMIT 1 FOR UPDATE
"""


def naive_assign(study_id: int) -> str:
    """The tempting pattern: lock the least-filled arm's counter row and increment it."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(NAIVE, [study_id])
        row_id, stratum = cursor.fetchone()
        cursor.execute(
            "UPDATE studies_assignmentcounter SET next_position = next_position + 1 WHERE id = %s",
            [row_id],
        )
    return stratum


def release_when_waiting(gate: Callable[[], None], waiters: int, start: Callable[[], None]) -> None:
    """Hold `gate`'s row locks until `waiters` backends queue behind them, then commit.

    Every arrival then sorts and picks its row while the locks are held: the same moment for all,
    with no sleeps, so the outcome is the same on every run.
    """
    raised: list[BaseException] = []

    def run() -> None:
        try:
            start()
        except BaseException as exc:  # re-raised below: the test fails with the thread's cause
            raised.append(exc)

    runner = threading.Thread(target=run)
    with transaction.atomic():
        gate()
        runner.start()
        deadline = time.monotonic() + 60
        while _waiting() < waiters and time.monotonic() < deadline:
            time.sleep(0.02)
    runner.join()
    if raised:
        raise raised[0]


def _waiting() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # pg_stat_activity is cached per xact
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def test_order_by_count_limit_1_for_update_piles_everyone_into_one_arm():
    study = three_arm_study()
    for key in ["base", "proactive", "collabllm"]:
        AssignmentCounter.objects.create(study=study, stratum=f"naive:{key}")
    n = 30
    results: list[object] = []
    release_when_waiting(
        gate=lambda: list(AssignmentCounter.objects.select_for_update().filter(study=study)),
        waiters=n,
        start=lambda: results.extend(in_threads([lambda: naive_assign(study.pk)] * n, threads=n)),
    )
    counts = Counter(results)
    # Each waiter re-reads only the row it sorted first, so none of them sees the others' counts.
    assert (
        max(counts.values())
        - min(counts.get(f"naive:{k}", 0) for k in ["base", "proactive", "collabllm"])
        > 1
    )


def test_the_allocator_stays_balanced_under_the_same_load():
    study = three_arm_study(block_size=3)
    AssignmentCounter.objects.create(study=study, stratum=allocation.STUDY_ROW)
    n = 30
    people = [ParticipantFactory(study=study) for _ in range(n)]
    release_when_waiting(
        gate=lambda: list(AssignmentCounter.objects.select_for_update().filter(study=study)),
        waiters=n,
        start=lambda: in_threads(
            [lambda p=p: svc.participant_consent(participant_id=p.pk) for p in people], threads=n
        ),
    )
    counts = Counter(
        Participant.objects.filter(study=study).values_list("condition__key", flat=True)
    )
    assert counts == {"base": 10, "proactive": 10, "collabllm": 10}
