import threading
from collections import Counter

import pytest
from django.db import connection

from studies.models import AssignmentCounter, Event, Participant
from studies.services import assignment
from studies.services import participants as svc
from tests.factories import ParticipantFactory, three_arm_study

ARMS = [("base", 1), ("proactive", 1), ("collabllm", 1)]


def test_each_block_holds_every_arm_in_proportion_to_its_weight():
    arms = [("a", 1), ("b", 2)]
    for block_index in range(20):
        block = assignment.block_for(
            arms=arms, block_size=6, seed=3, stratum="all", block_index=block_index
        )
        assert Counter(block) == {"a": 2, "b": 4}


def test_the_sequence_is_reproducible_from_the_seed():
    first = [
        assignment.choose(arms=ARMS, block_size=6, seed=11, stratum="all", position=i).choice
        for i in range(60)
    ]
    again = [
        assignment.choose(arms=ARMS, block_size=6, seed=11, stratum="all", position=i).choice
        for i in range(60)
    ]
    other = [
        assignment.choose(arms=ARMS, block_size=6, seed=12, stratum="all", position=i).choice
        for i in range(60)
    ]
    assert first == again
    assert first != other


def test_blocks_are_shuffled_not_cyclic():
    blocks = {
        tuple(assignment.block_for(arms=ARMS, block_size=6, seed=5, stratum="all", block_index=i))
        for i in range(30)
    }
    assert len(blocks) > 5


def test_it_rejects_a_block_size_that_is_not_a_multiple_of_the_weights():
    with pytest.raises(ValueError, match="multiple"):
        assignment.choose(
            arms=[("a", 1), ("b", 1)], block_size=3, seed=0, stratum="all", position=0
        )


def test_allocation_records_seed_block_and_algorithm():
    alloc = assignment.choose(arms=ARMS, block_size=6, seed=9, stratum="all", position=7)
    record = alloc.as_record()
    assert record["block_index"] == 1 and record["block_position"] == 1
    assert record["seed"] == 9 and record["algorithm"] == assignment.ALGORITHM_VERSION


@pytest.mark.django_db(transaction=True)
def test_allocation_outside_a_transaction_is_refused():
    study = three_arm_study()
    with pytest.raises(RuntimeError, match="transaction"):
        assignment.allocation_next(
            study_id=study.pk, stratum="all", arms=ARMS, block_size=6, seed=0
        )


@pytest.mark.django_db
def test_a_second_consent_does_not_reassign():
    study = three_arm_study()
    participant = ParticipantFactory(study=study)
    svc.participant_consent(participant_id=participant.pk)
    participant.refresh_from_db()
    before = (participant.condition_id, participant.allocation)
    with pytest.raises(svc.StudyActionError):
        svc.participant_consent(participant_id=participant.pk)
    participant.refresh_from_db()
    assert (participant.condition_id, participant.allocation) == before
    assert AssignmentCounter.objects.get(study=study, stratum="all").next_position == 1


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_concurrent_arrivals_are_balanced_within_one_block_and_never_share_a_position():
    study = three_arm_study()
    people = [ParticipantFactory(study=study) for _ in range(60)]
    barrier = threading.Barrier(len(people))
    errors: list[BaseException] = []

    def arrive(pid: int) -> None:
        try:
            barrier.wait()
            svc.participant_consent(participant_id=pid)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=arrive, args=(p.pk,)) for p in people]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = Participant.objects.filter(study=study)
    positions = sorted(p.allocation["arm"]["position"] for p in rows)
    assert positions == list(range(len(people)))
    counts = Counter(rows.values_list("condition__key", flat=True))
    assert max(counts.values()) - min(counts.values()) <= 1
    expected = Counter(
        assignment.choose(
            arms=ARMS, block_size=6, seed=study.seed, stratum="all", position=i
        ).choice
        for i in range(len(people))
    )
    assert counts == expected
    assert Event.objects.filter(study=study, kind="study.participant.consented").count() == len(
        people
    )
