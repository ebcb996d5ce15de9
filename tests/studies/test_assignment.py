"""The pure allocator (no database) and the locked service that runs it."""

from collections import Counter

import pytest
from django.db import transaction

from studies.models import AssignmentCounter, Event, Participant
from studies.services import allocation as al
from studies.services import assignment as a
from studies.services import outcomes
from studies.services import participants as svc
from studies.services.errors import StudyActionError
from tests.factories import ParticipantFactory, three_arm_study

ARMS = (al.Arm("base"), al.Arm("proactive"), al.Arm("collabllm"))
PAIRS = [("base", 1), ("proactive", 1), ("collabllm", 1)]


def run(design: al.Design, n: int, *, stratum: str = "all", state=None, in_study=None):
    """Allocate n arrivals in one stratum; return the slots and the final state."""
    slots = []
    for _ in range(n):
        slot, state = al.allocate(design, stratum=stratum, state=state, study_occupied=in_study)
        slots.append(slot)
    return slots, state


def choices(slots) -> Counter:
    return Counter(s.choice for s in slots)


def test_each_block_holds_every_arm_in_proportion_to_its_weight():
    for block_index in range(20):
        block = al.block_for(
            arms=[("a", 1), ("b", 2)], block_size=6, seed=3, stratum="all", block_index=block_index
        )
        assert Counter(block) == {"a": 2, "b": 4}


def test_blocks_are_shuffled_not_cyclic():
    blocks = {
        tuple(al.block_for(arms=PAIRS, block_size=6, seed=5, stratum="all", block_index=i))
        for i in range(30)
    }
    assert len(blocks) > 5


def test_it_rejects_a_block_size_that_is_not_a_multiple_of_the_weights():
    with pytest.raises(ValueError, match="multiple"):
        al.block_for(arms=[("a", 1), ("b", 1)], block_size=3, seed=0, stratum="all", block_index=0)


def test_the_sequence_is_reproducible_from_seed_and_stratum():
    def sequence(seed: int, stratum: str) -> list[str]:
        design = al.Design(ARMS, seed=seed, block_sizes=(3, 6))
        return [s.choice for s in run(design, 60, stratum=stratum)[0]]

    assert sequence(11, "all") == sequence(11, "all")
    assert sequence(11, "all") != sequence(12, "all")
    assert sequence(11, "all") != sequence(11, "document_type=blog_post")


def test_weighted_blocks_keep_the_weights_exactly_at_every_block_end():
    design = al.Design((al.Arm("a", 1), al.Arm("b", 2)), seed=1, block_sizes=(3,))
    slots, _ = run(design, 300)
    assert choices(slots) == {"a": 100, "b": 200}
    for end in range(3, 301, 3):
        assert choices(slots[:end]) == {"a": end // 3, "b": 2 * end // 3}


def test_random_block_sizes_draw_several_sizes_and_each_block_is_balanced():
    design = al.Design(ARMS, seed=4, block_sizes=(3, 6, 9))
    slots, _ = run(design, 600)
    sizes = {s.block_index: s.block_size for s in slots}
    assert set(sizes.values()) == {3, 6, 9}
    for index, size in sizes.items():
        block = [s.choice for s in slots if s.block_index == index]
        if len(block) == size:
            assert Counter(block) == {
                "base": size // 3,
                "proactive": size // 3,
                "collabllm": size // 3,
            }
    assert [s.position for s in slots] == list(range(600))


def test_a_capped_arm_falls_back_to_the_least_filled_open_arm():
    design = al.Design((al.Arm("base", cap=5), al.Arm("proactive"), al.Arm("collabllm")), seed=2,
                      block_sizes=(3,))  # fmt: skip
    in_study: Counter = Counter()
    slots = []
    state = None
    for _ in range(30):
        slot, state = al.allocate(design, stratum="all", state=state, study_occupied=in_study)
        in_study[slot.choice] += 1
        slots.append(slot)
    counts = choices(slots)
    assert counts["base"] == 5 and abs(counts["proactive"] - counts["collabllm"]) <= 1
    fallbacks = [s for s in slots if s.cap_fallback]
    assert len(fallbacks) == 5 and all(s.position >= 15 and s.choice != "base" for s in fallbacks)


def test_a_per_stratum_cap_binds_within_the_stratum_only():
    arms = (al.Arm("base", cap_per_stratum=2), al.Arm("proactive"))
    design = al.Design(arms, seed=0, block_sizes=(2,))
    first, _ = run(design, 10, stratum="x=1")
    second, _ = run(design, 10, stratum="x=2")
    assert choices(first)["base"] == 2 and choices(second)["base"] == 2


def test_when_every_arm_is_capped_the_allocator_says_full():
    arms = (al.Arm("base", cap_per_stratum=1), al.Arm("proactive", cap_per_stratum=1))
    _, state = run(al.Design(arms, seed=0, block_sizes=(2,)), 2)
    with pytest.raises(al.AllocationFull):
        al.allocate(al.Design(arms, seed=0, block_sizes=(2,)), stratum="all", state=state)


def test_caps_are_ignored_where_the_design_says_so():
    arms = (al.Arm("base", cap_per_stratum=1), al.Arm("proactive", cap_per_stratum=1))
    slots, _ = run(al.Design(arms, seed=0, block_sizes=(2,), caps=False), 10)
    assert choices(slots) == {"base": 5, "proactive": 5}


def test_least_filled_follows_the_weights_and_breaks_ties_by_seed():
    arms = (al.Arm("a", 1), al.Arm("b", 3))
    slots, _ = run(al.Design(arms, seed=9, kind=al.LEAST_FILLED), 400)
    assert choices(slots) == {"a": 100, "b": 300}
    assert all(s.block_index is None for s in slots)
    firsts = {run(al.Design(ARMS, seed=s, kind=al.LEAST_FILLED), 1)[0][0].choice for s in range(20)}
    assert len(firsts) > 1


def test_a_freed_slot_goes_to_the_next_arrival_before_any_new_position():
    design = al.Design(ARMS, seed=3, block_sizes=(3,))
    slots, state = run(design, 6)
    gone = slots[1]
    state = al.release(state, gone.as_record(), participant_id=42)
    assert state["occupied"][gone.choice] == 1
    slot, state = al.allocate(design, stratum="all", state=state)
    assert (slot.choice, slot.position, slot.reused_from) == (gone.choice, gone.position, 42)
    assert state["freed"] == [] and state["next_position"] == 6
    assert state["occupied"] == {"base": 2, "proactive": 2, "collabllm": 2}


def test_freed_slots_are_taken_oldest_first_and_not_without_reuse():
    design = al.Design(ARMS, seed=3, block_sizes=(3,))
    slots, state = run(design, 3)
    for pid, slot in enumerate(slots[::-1]):
        state = al.release(state, slot.as_record(), participant_id=pid)
    taken, _ = run(design, 3, state=state)
    assert [s.reused_from for s in taken] == [0, 1, 2]
    no_reuse = al.Design(ARMS, seed=3, block_sizes=(3,), reuse_slots=False)
    fresh, _ = run(no_reuse, 1, state=state)
    assert fresh[0].reused_from is None and fresh[0].position == 3


def test_the_allocator_never_changes_the_state_it_is_given():
    state = al.fresh_state()
    before = dict(state)
    al.allocate(al.Design(ARMS, seed=1, block_sizes=(3,)), stratum="all", state=state)
    assert state == before


def test_strata_names_fit_the_counter_column():
    params = {"country": "x" * 500}
    name = al.arm_stratum(
        stratify_by="param:country", params=params, document_type="", prefix="preview/"
    )
    assert len(name) == al.STRATUM_MAX_CHARS and name.startswith("preview/country=xxx")
    assert al.arm_stratum(stratify_by="param:country", params={}, document_type="") == (
        "country=unknown"
    )
    assert al.arm_stratum(stratify_by="", params=params, document_type="blog_post") == "all"


def test_imbalance_is_measured_per_unit_of_weight():
    assert al.imbalance({"a": 10, "b": 20}, {"a": 1, "b": 2}) == 0
    assert al.imbalance({"a": 4, "b": 2}, {"a": 1, "b": 1}) == 2


# --- the service ---------------------------------------------------------------------------


def consent(participant) -> Participant:
    svc.participant_consent(participant_id=participant.pk)
    participant.refresh_from_db()
    return participant


@pytest.mark.django_db
def test_the_allocation_is_recorded_on_the_participant_and_in_the_event_log():
    study = three_arm_study(block_size=3)
    participant = consent(ParticipantFactory(study=study))
    record = participant.allocation
    assert record["algorithm"] == al.ALGORITHM_VERSION == record["arm"]["algorithm"]
    assert record["arm"]["choice"] == participant.condition.key
    assert record["arm"]["seed"] == study.seed and record["arm"]["design"] == "permuted_blocks"
    assert record["document_type"]["choice"] == participant.document_type
    event = Event.objects.get(participant=participant, kind="study.participant.consented")
    assert event.payload["allocation"] == record


@pytest.mark.django_db
def test_a_second_consent_does_not_reassign():
    study = three_arm_study()
    participant = consent(ParticipantFactory(study=study))
    before = (participant.condition_id, participant.allocation)
    with pytest.raises(StudyActionError):
        svc.participant_consent(participant_id=participant.pk)
    participant.refresh_from_db()
    assert (participant.condition_id, participant.allocation) == before
    assert AssignmentCounter.objects.get(study=study, stratum="all").next_position == 1


@pytest.mark.django_db
def test_an_assignment_locks_its_rows_in_one_statement_and_writes_them_in_one(
    django_assert_num_queries,
):
    study = three_arm_study(block_size=3, stratify_by="document_type")
    consent(ParticipantFactory(study=study))
    participant = Participant.objects.select_related("study").get(
        pk=ParticipantFactory(study=study).pk
    )
    with transaction.atomic():
        with django_assert_num_queries(3):  # arms, document types, the counter rows that exist
            plan = a.assignment_plan(participant)
        with django_assert_num_queries(2):  # SELECT ... ORDER BY stratum FOR UPDATE, one UPDATE
            a.assign_participant(participant, plan)


@pytest.mark.django_db(transaction=True)
def test_assignment_outside_a_transaction_is_refused():
    participant = ParticipantFactory(study=three_arm_study())
    with pytest.raises(RuntimeError, match="transaction"):
        a.assign_participant(participant)


@pytest.mark.django_db
def test_service_sequence_matches_the_pure_allocator():
    study = three_arm_study(block_size=3, block_sizes=[3, 6], seed=21)
    people = [consent(ParticipantFactory(study=study)) for _ in range(12)]
    design = a.arm_design(study, list(study.conditions.all()))
    expected, _ = run(design, 12)
    assert [p.allocation["arm"] for p in people] == [s.as_record() for s in expected]


@pytest.mark.django_db
def test_stratifying_by_document_type_keeps_one_sequence_per_type():
    study = three_arm_study(block_size=3, stratify_by="document_type")
    people = [consent(ParticipantFactory(study=study)) for _ in range(9)]
    strata = Counter(p.allocation["arm"]["stratum"] for p in people)
    assert strata == {f"document_type={d}": 3 for d in {p.document_type for p in people}}
    for stratum in strata:
        assert {p.condition.key for p in people if p.allocation["arm"]["stratum"] == stratum} == {
            "base",
            "proactive",
            "collabllm",
        }


@pytest.mark.django_db
def test_stratifying_by_a_recruiting_parameter_uses_its_value_or_unknown():
    study = three_arm_study(block_size=3, stratify_by="param:STUDY_ID")
    uk = consent(ParticipantFactory(study=study, recruiting_params={"STUDY_ID": "uk"}))
    other = consent(ParticipantFactory(study=study, recruiting_params={}))
    assert uk.allocation["arm"]["stratum"] == "STUDY_ID=uk"
    assert other.allocation["arm"]["stratum"] == "STUDY_ID=unknown"


@pytest.mark.django_db
def test_pilots_and_previews_use_their_own_sequences_and_ignore_caps():
    study = three_arm_study(block_size=3)
    study.conditions.update(cap=0)
    pilot = consent(ParticipantFactory(study=study, is_pilot=True))
    preview = consent(ParticipantFactory(study=study, is_preview=True))
    assert pilot.allocation["arm"]["stratum"] == "pilot/all"
    assert preview.allocation["arm"]["stratum"] == "preview/all"
    assert not AssignmentCounter.objects.filter(study=study, stratum__in=["all", "study"]).exists()


@pytest.mark.django_db
def test_a_full_study_refuses_consent_and_changes_nothing():
    study = three_arm_study(block_size=3)
    study.conditions.update(cap=1)
    for _ in range(3):
        consent(ParticipantFactory(study=study))
    late = ParticipantFactory(study=study)
    with pytest.raises(StudyActionError) as refused:
        svc.participant_consent(participant_id=late.pk)
    assert refused.value.code == "full"
    late.refresh_from_db()
    assert late.status == Participant.Status.ENTERED and late.allocation == {}
    assert AssignmentCounter.objects.get(study=study, stratum="document_type").next_position == 3


@pytest.mark.django_db
def test_a_misconfigured_design_is_reported_and_refused():
    study = three_arm_study(block_size=4, stratify_by="country")
    problems = a.design_problems(study)
    assert any("multiple" in p for p in problems) and any("country" in p for p in problems)
    with pytest.raises(StudyActionError) as refused:
        svc.participant_consent(participant_id=ParticipantFactory(study=study).pk)
    assert refused.value.code == "misconfigured"
    study.block_size, study.stratify_by = 6, "param:country"
    study.save()
    assert a.design_problems(study) == []


@pytest.mark.django_db
@pytest.mark.parametrize("token", ["SESSION_ID", "assignmentId"])
def test_stratifying_by_a_platform_token_is_refused(token):
    # A token rebinds a browser to its participant: as a stratum it would sit in the allocation
    # record, the event log and every export.
    study = three_arm_study(block_size=3, stratify_by=f"param:{token}")
    assert any(token in p for p in a.design_problems(study))
    with pytest.raises(StudyActionError) as refused:
        svc.participant_consent(participant_id=ParticipantFactory(study=study).pk)
    assert refused.value.code == "misconfigured"


@pytest.mark.django_db
def test_a_returned_participants_slot_goes_to_the_next_arrival_once():
    study = three_arm_study(block_size=3)
    people = [consent(ParticipantFactory(study=study)) for _ in range(3)]
    gone = people[1]
    outcomes.participant_end(participant_id=gone.pk, outcome="returned")
    gone.refresh_from_db()
    assert gone.allocation["released"]["reason"] == "returned"
    assert Event.objects.get(kind="study.participant.returned").payload["slot_freed"] is True
    assert Event.objects.filter(kind="study.assignment.released", participant=gone).count() == 1
    with transaction.atomic():
        assert a.release_slot(Participant.objects.get(pk=gone.pk), reason="again") is False
    newcomer = consent(ParticipantFactory(study=study))
    assert newcomer.allocation["arm"]["reused_from"] == gone.pk
    assert newcomer.allocation["arm"]["position"] == gone.allocation["arm"]["position"]
    assert newcomer.condition_id == gone.condition_id
    assert newcomer.document_type == gone.document_type
    assert AssignmentCounter.objects.get(study=study, stratum="all").next_position == 3
    fresh = consent(ParticipantFactory(study=study))
    assert (
        fresh.allocation["arm"]["position"] == 3 and fresh.allocation["arm"]["reused_from"] is None
    )


@pytest.mark.django_db
def test_without_slot_reuse_a_return_frees_nothing():
    study = three_arm_study(block_size=3, reuse_slots=False)
    gone = consent(ParticipantFactory(study=study))
    outcomes.participant_end(participant_id=gone.pk, outcome="timed_out")
    gone.refresh_from_db()
    assert "released" not in gone.allocation
    assert Event.objects.get(kind="study.participant.timed_out").payload["slot_freed"] is False
    state = AssignmentCounter.objects.get(study=study, stratum="all").state
    assert state["freed"] == [] and sum(state["occupied"].values()) == 1


@pytest.mark.django_db
def test_a_freed_slot_lowers_the_count_that_caps_are_checked_against():
    study = three_arm_study(block_size=3)
    study.conditions.update(cap=1)
    people = [consent(ParticipantFactory(study=study)) for _ in range(3)]
    outcomes.participant_exclude(participant_id=people[0].pk, reason="bot")
    newcomer = consent(ParticipantFactory(study=study))
    assert newcomer.condition_id == people[0].condition_id
    with pytest.raises(StudyActionError, match="full"):
        svc.participant_consent(participant_id=ParticipantFactory(study=study).pk)
