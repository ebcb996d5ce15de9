"""Public release: only those who agreed to sharing, fresh ids, training's chat layout, likely
personal data flagged for review, and a dataset card that states what is in and what is not."""

import csv
import json
import socket
from dataclasses import dataclass

import pytest
import spacy
from django.core.management import CommandError, call_command

from studies.models import Participant
from studies.services import outcomes, pii, release, turns
from studies.services.exports import pseudonym
from studies.services.release import ReleaseError, release_export
from tests.factories import ParticipantFactory, three_arm_study
from tests.studies.conftest import advance_to_chat, new_key
from tests.studies.test_exports import finish

pytestmark = pytest.mark.django_db

EMAIL, PHONE = "jane.doe@example.com", "+1 415-555-0132"


@dataclass
class World:
    study: object
    sharing: list[Participant]  # released: agreed, completed, kept, not a pilot or preview
    others: list[Participant]  # declined, excluded, quit, pilot, preview


def say(participant, text, reply="Here you go.", reason="stop"):
    started = turns.turn_start(participant_id=participant.pk, text=text, key=new_key())
    outcome = turns.turn_complete(
        message_id=started.assistant_message.pk, text=reply, model="m", finish_reason=reason,
        prompt_tokens=5, completion_tokens=2, time_to_first_token=0.1, duration=0.3,
    )  # fmt: skip
    if outcome.rating_due_after:
        turns.rating_record(participant_id=participant.pk, after_turn=outcome.rating_due_after,
                            score=6)  # fmt: skip
    return outcome.message


def person(study, external_id, *, sharing=True, turns_=2, **fields):
    participant = advance_to_chat(
        ParticipantFactory(study=study, external_id=external_id, **fields)
    )
    Participant.objects.filter(pk=participant.pk).update(consent_sharing=sharing)
    for t in range(1, turns_ + 1):
        say(participant, f"turn {t}")
    return participant


def done(participant):
    finish(participant)
    participant.refresh_from_db()
    return participant


def build_world():
    study = three_arm_study(asks_sharing_consent=True, rating_every=2, min_turns=2)
    writer = advance_to_chat(ParticipantFactory(study=study, external_id="prolific:W1"))
    Participant.objects.filter(pk=writer.pk).update(consent_sharing=True)
    say(writer, f"Write my bio. Reach me at {EMAIL}.")
    cut = say(writer, "Make it longer", reply="A long answer that", reason="length")
    more = turns.turn_continue(participant_id=writer.pk, message_id=cut.pk)
    outcome = turns.turn_complete(
        message_id=more.pk, text="goes on here.", model="m", finish_reason="stop",
        prompt_tokens=5, completion_tokens=2, time_to_first_token=0.1, duration=0.3,
    )  # fmt: skip
    if outcome.rating_due_after:
        turns.rating_record(participant_id=writer.pk, after_turn=2, score=6)
    lost = turns.turn_start(participant_id=writer.pk, text="One more?", key=new_key())
    turns.turn_fail(message_id=lost.assistant_message.pk, text=None, kind="timeout", detail="")
    sharing = [done(writer), done(person(study, "prolific:S2"))]
    declined = done(person(study, "prolific:D1", sharing=False))
    excluded = done(person(study, "prolific:X1"))
    outcomes.participant_exclude(participant_id=excluded.pk, reason="too fast")
    quitter = person(study, "prolific:Q1")
    outcomes.participant_end(participant_id=quitter.pk, outcome="abandoned")
    pilot = done(person(study, "pilot:1", is_pilot=True))
    preview = done(person(study, "preview:1", is_preview=True))
    return World(study, sharing, [declined, excluded, quitter, pilot, preview])


@pytest.fixture
def world():
    return build_world()


def rows(folder):
    with (folder / "conversations.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def review(folder):
    with (folder / "pii_review.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def by_first_message(records):
    return {r["messages"][0]["content"]: r for r in records}


def test_only_participants_who_agreed_to_sharing_and_completed_are_released(world, tmp_path):
    result = release_export(world.study, tmp_path / "out")
    released = rows(result.path)
    assert len(released) == result.conversations == 2
    expected = sorted(p.condition.key for p in world.sharing)
    assert sorted(r["arm"] for r in released) == expected
    assert sum(result.per_arm.values()) == 2


def test_pilots_are_released_only_when_asked(world, tmp_path):
    result = release_export(world.study, tmp_path / "out", include_pilot=True)
    assert result.conversations == 3


def test_release_ids_are_fresh_and_match_no_platform_id(world, tmp_path):
    text = (release_export(world.study, tmp_path / "out").path / "conversations.jsonl").read_text()
    ids = [r["id"] for r in rows(tmp_path / "out")]
    assert sorted(ids) == ["r-0001", "r-0002"]
    for p in world.sharing + world.others:
        for secret in (str(p.public_id), p.external_id, pseudonym(p.external_id)):
            assert secret not in text


def test_release_ids_follow_a_keyed_order_that_is_stable(world, tmp_path):
    first = release.release_ids(world.study, world.sharing)
    assert first == release.release_ids(world.study, list(reversed(world.sharing)))


def test_messages_are_the_training_chat_layout_with_continuations_joined(world, tmp_path):
    record = by_first_message(rows(release_export(world.study, tmp_path / "out").path))
    messages = record[f"Write my bio. Reach me at {EMAIL}."]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 2
    assert all(set(m) == {"role", "content"} for m in messages)
    assert messages[3]["content"] == turns.join_reply_parts(["A long answer that", "goes on here."])
    assert "One more?" not in [m["content"] for m in messages]


def test_a_record_carries_the_task_document_survey_and_ratings(world, tmp_path):
    record = by_first_message(rows(release_export(world.study, tmp_path / "out").path))["turn 1"]
    participant = world.sharing[1]
    assert (record["task_type"], record["topic"]) == (
        participant.document_type, participant.task.topic,
    )  # fmt: skip
    assert record["final_document"] == "My document"
    assert record["feedback"] == {"strengths": "clear", "weaknesses": "slow"}
    assert [a["answer"] for a in record["intent"]] == ["a", "b"]
    assert record["ratings"] == {"document_quality": 7, "overall_interaction": 8,
                                 "after_turn": {"2": 6}}  # fmt: skip


def test_an_email_and_a_phone_number_typed_by_a_participant_are_flagged_where_they_are(
    world, tmp_path
):
    writer = world.sharing[0]
    writer.final_survey.weaknesses = f"Call me on {PHONE} about it"
    writer.final_survey.save()
    out = release_export(world.study, tmp_path / "out").path
    record = by_first_message(rows(out))[f"Write my bio. Reach me at {EMAIL}."]
    flags = {(f["release_id"], f["location"], f["entity_type"], f["text"]) for f in review(out)}
    assert (record["id"], "messages[0].user", "EMAIL_ADDRESS", EMAIL) in flags
    assert (record["id"], "feedback.weaknesses", "PHONE_NUMBER", PHONE) in flags
    email = next(f for f in review(out) if f["entity_type"] == "EMAIL_ADDRESS")
    content = record["messages"][0]["content"]
    assert content[int(email["start"]) : int(email["end"])] == EMAIL
    assert EMAIL in content  # flagged for review, not removed


def test_the_card_states_counts_consent_removals_and_the_scan(world, tmp_path):
    result = release_export(world.study, tmp_path / "out")
    card = (result.path / "README.md").read_text()
    assert card.startswith("---\npretty_name:")
    for arm, n in result.per_arm.items():
        assert f"| {arm} | {n} |" in card
    assert f"{result.conversations} conversations." in card
    assert release.SHARING_QUESTION in card
    assert "Recruiting ids" in card and "every timestamp" in card
    assert f"{result.flagged} spans were flagged" in card and result.flagged >= 1
    assert "EMAIL_ADDRESS" in card and "review before release" in card


def test_a_study_that_never_asked_for_sharing_releases_nobody(tmp_path):
    study = three_arm_study()
    with pytest.raises(ReleaseError, match="never asked"):
        release_export(study, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_scan_loads_no_language_model_and_opens_no_connection(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("no model loads or network at run time")

    monkeypatch.setattr(spacy, "load", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    pii.recognizers.cache_clear()
    spans = pii.scan(f"mail {EMAIL}, phone {PHONE}, site https://example.org/me")
    found = {(s.entity_type, s.text) for s in spans}
    assert {("EMAIL_ADDRESS", EMAIL), ("PHONE_NUMBER", PHONE)} <= found
    assert not any(s.entity_type == "URL" and s.text in EMAIL for s in spans)


def test_the_command_writes_a_release(world, tmp_path, capsys):
    call_command("export_study", world.study.slug, "--out", str(tmp_path / "out"), "--release")
    assert "2 conversations" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "conversations.jsonl", "pii_review.csv", "README.md",
    }  # fmt: skip


def test_the_command_refuses_a_study_that_never_asked_and_raw_ids(world, tmp_path):
    with pytest.raises(CommandError, match="never asked"):
        call_command("export_study", three_arm_study().slug, "--out", str(tmp_path / "a"),
                     "--release")  # fmt: skip
    with pytest.raises(CommandError, match="--raw-ids"):
        call_command("export_study", world.study.slug, "--out", str(tmp_path / "b"), "--release",
                     "--raw-ids")  # fmt: skip
