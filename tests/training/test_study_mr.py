"""MR of real participants' replies: the participant as the hidden goal, the final document as the
reference, one row per finished reply, failures as rows of their own."""

from __future__ import annotations

import csv
import io
import json
import math
import uuid

import pytest
from django.core.management import CommandError, call_command

from studies.models import Message
from studies.services import exports, turns
from studies.services import participants as svc
from tests.factories import ModelEndpointFactory, ParticipantFactory, three_arm_study
from tests.fakes.openai_server import FakeOpenAIServer
from tests.studies.conftest import advance_to_chat
from tests.training.conftest import DOC, kind_of, responder, scripted_roles, user_says
from training.pipeline.llm import Runtime
from training.pipeline.settings import RewardSettings, SamplingSettings
from training.pipeline.study_mr import (
    COLUMNS,
    NO_FINAL_DOCUMENT,
    ParticipantRecord,
    reply_task,
    score_participant,
)
from training.services.benchmarks import roles_from
from training.services.study_rewards import score_study, study_chat, study_records

JUDGE_4 = json.dumps({"score": 4})
ONE = SamplingSettings(window=1, samples=1, user_retries=0)


def _record(final_document: str = DOC) -> ParticipantRecord:
    said = [
        ("user", "EARLY help me with a compost post"),
        ("assistant", "Who is it for?"),
        ("user", "LATER-2 city people, keep it short"),
        ("assistant", DOC),
        ("user", "LATER-3 add a line on smell"),
        ("assistant", DOC + " It should not smell."),
    ]
    chat = [
        {"role": role, "content": text, "turn_index": i // 2 + 1, "message_id": 100 + i}
        for i, (role, text) in enumerate(said)
    ]
    return ParticipantRecord(
        participant_id="p-1",
        arm="collabllm",
        document_type="Blog post",
        topic="balcony compost",
        brief="Write for your neighbours.",
        intent=[("Who reads it?", "INTENT-readers"), ("What tone?", "INTENT-friendly")],
        chat=chat,
        final_document=final_document,
    )


def test_the_goal_holds_the_intent_and_only_later_messages_and_the_reference_is_the_final_doc():
    task = reply_task(_record(), 2)
    assert task.kind == "document" and task.description == "a blog post about balcony compost"
    assert "INTENT-readers" in task.goal and "INTENT-friendly" in task.goal
    assert "Write for your neighbours." in task.goal
    assert "LATER-3" in task.goal
    assert "LATER-2" not in task.goal and "EARLY" not in task.goal
    assert DOC not in task.goal
    assert task.reference == DOC
    assert task.metadata["participant_id"] == "p-1" and task.metadata["turn"] == "2"


def _transcript_tail(body) -> str:
    return body["messages"][-1]["content"].split("\n\nWrite your next message.")[0]


async def test_each_reply_is_scored_after_its_own_history(scripted):
    record = _record()
    seen: list[str] = []

    def user(body):
        seen.append(_transcript_tail(body))
        return user_says("more please")

    scripted.responder = responder(
        user=user, policy="sure", extractor=json.dumps({"final": DOC}), judge=JUDGE_4
    )
    reward = RewardSettings()
    rows = await score_participant(Runtime(8), scripted_roles(scripted), record, ONE, reward)
    assert [(r["turn_index"], r["message_id"]) for r in rows] == [(1, 101), (2, 103), (3, 105)]
    chat = record.chat
    for t, row in enumerate(rows):
        asked, reply = chat[2 * t]["content"], chat[2 * t + 1]["content"]
        assert any(s.endswith(f"USER: {asked}\n\nASSISTANT: {reply}") for s in seen)
        assert row["error"] == "" and row["rollouts_succeeded"] == 1
        assert row["task"] == pytest.approx(1.0) and row["interactivity"] == pytest.approx(0.75)
        assert row["penalty"] > 0
        assert row["mr"] == pytest.approx(row["task"] - row["penalty"] + row["interactivity"])
    assert set(rows[0]) == set(COLUMNS)


async def test_a_reply_whose_rollouts_fail_is_an_error_row_and_the_others_are_scored(scripted):
    record = _record()

    def user(body):
        if _transcript_tail(body).endswith("ASSISTANT: " + DOC):  # the reply of turn 2 only
            return "!500"
        return user_says("more please")

    scripted.responder = responder(
        user=user, policy="sure", extractor=json.dumps({"final": DOC}), judge=JUDGE_4
    )
    rows = await score_participant(
        Runtime(8), scripted_roles(scripted), record, ONE, RewardSettings()
    )
    failed = rows[1]
    assert failed["mr"] is None and failed["task"] is None
    assert "0 of 1 rollouts succeeded" in failed["error"]
    assert (failed["rollouts_attempted"], failed["rollouts_failed"]) == (1, 1)
    assert all(r["mr"] is not None and r["error"] == "" for r in (rows[0], rows[2]))


async def test_without_a_final_document_every_reply_says_so_and_no_model_is_asked(scripted):
    scripted.responder = responder(user="!500", policy="!500", extractor="!500", judge="!500")
    rows = await score_participant(
        Runtime(8), scripted_roles(scripted), _record(final_document=""), ONE, RewardSettings()
    )
    assert [r["error"] for r in rows] == [NO_FINAL_DOCUMENT] * 3
    assert all(r["mr"] is None for r in rows) and scripted.stats.chat_requests == 0


def test_a_continued_reply_is_one_entry_under_its_first_part():
    def message(pk, role, turn, content, continues=None):
        return Message(
            pk=pk, role=role, turn_index=turn, content=content, status="complete",
            continuation_of_id=continues,
        )  # fmt: skip

    failed = Message(pk=2, role="assistant", turn_index=1, content="x", status="failed")
    chat = study_chat([
        message(1, "user", 1, "hi"), failed, message(3, "assistant", 1, "Hello"),
        message(4, "assistant", 1, "there", continues=3), message(5, "user", 2, "ok"),
    ])  # fmt: skip
    assert [(m["role"], m["content"], m["message_id"]) for m in chat] == [
        ("user", "hi", 1),
        ("assistant", "Hello there", 3),
        ("user", "ok", 5),
    ]


# The study: a scripted server in its own thread (the management command runs its own loop).


def _respond(body):
    if kind_of(body) == "user":
        return user_says("more please")
    if kind_of(body) == "extractor":
        return json.dumps({"final": DOC})
    return JUDGE_4 if kind_of(body) == "judge" else "sure"


@pytest.fixture
def served():
    server = FakeOpenAIServer(tokens=8)
    server.responder = _respond
    base_url, stop = server.run_in_thread()
    yield ModelEndpointFactory(base_url=base_url, served_model="fake-script")
    stop()


def _participant(study, external_id, n_turns=2, *, finish=True, **fields):
    p = advance_to_chat(ParticipantFactory(study=study, external_id=external_id, **fields))
    for t in range(1, n_turns + 1):
        started = turns.turn_start(participant_id=p.pk, text=f"ask {t}", key=uuid.uuid4())
        turns.turn_complete(
            message_id=started.assistant_message.pk, text=f"reply {t}", model="m",
            finish_reason="stop", prompt_tokens=5, completion_tokens=2,
            time_to_first_token=0.1, duration=0.3,
        )  # fmt: skip
    if finish:
        svc.participant_finish_chat(participant_id=p.pk)
        answers = svc.FinalAnswers(DOC, 7, 8, "clear", "slow")
        svc.participant_submit_final(participant_id=p.pk, answers=answers)
    p.refresh_from_db()
    return p


@pytest.fixture
def study(served):
    study = three_arm_study(endpoint=served, rating_every=5, min_turns=2)
    _participant(study, "prolific:a")
    _participant(study, "prolific:b")
    _participant(study, "prolific:quit", finish=False)
    _participant(study, "pilot:1", is_pilot=True)
    return study


def _rows(path):
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader), reader.fieldnames


def _roles(endpoint):
    return roles_from(endpoint, 64)


@pytest.mark.django_db
def test_study_records_read_completed_participants_in_three_queries(
    study, django_assert_num_queries
):
    with django_assert_num_queries(3):
        records = study_records(study)
    assert len(records) == 2
    assert [m["content"] for m in records[0].chat] == ["ask 1", "reply 1", "ask 2", "reply 2"]
    assert records[0].intent == [("Who reads it?", "a"), ("What tone?", "b")]
    assert records[0].final_document == DOC
    assert len(study_records(study, include_pilot=True)) == 3


@pytest.mark.django_db
def test_the_csv_has_a_row_per_reply_that_joins_the_export(study, served, tmp_path):
    path = score_study(
        study, roles=_roles(served), sampling=ONE, reward=RewardSettings(),
        out_dir=tmp_path / "mr",
    )  # fmt: skip
    rows, columns = _rows(path)
    assert tuple(columns) == COLUMNS
    assert len(rows) == 4 and all(r["error"] == "" and float(r["mr"]) > 0 for r in rows)
    folder = exports.export_study(study, tmp_path / "export", fmt="csv").path
    people, _ = _rows(folder / "participants.csv")
    messages, _ = _rows(folder / "messages.csv")
    completed = {p["participant_id"] for p in people if p["status"] == "completed"}
    assert {r["participant_id"] for r in rows} == completed
    replies = {
        (m["participant_id"], m["message_id"], m["turn_index"])
        for m in messages
        if m["role"] == "assistant"
    }
    assert all((r["participant_id"], r["message_id"], r["turn_index"]) in replies for r in rows)
    settings = json.loads((tmp_path / "mr" / "reply_rewards_settings.json").read_text())
    assert settings["sampling"]["window"] == 1 and settings["sampling"]["samples"] == 1
    assert settings["roles"]["judge"]["base_url"] == served.base_url
    assert settings["participants"] == 2 and settings["scored"] == 4


@pytest.mark.django_db
def test_pilots_are_scored_only_when_asked(study, served, tmp_path):
    path = score_study(
        study, roles=_roles(served), sampling=ONE, reward=RewardSettings(),
        out_dir=tmp_path, include_pilot=True,
    )  # fmt: skip
    rows, _ = _rows(path)
    assert len({r["participant_id"] for r in rows}) == 3


@pytest.mark.django_db
def test_the_command_scores_the_study_on_the_named_endpoint(study, served, tmp_path):
    out = io.StringIO()
    call_command(
        "score_study", study.slug, "--out", str(tmp_path), "--endpoint", served.name,
        "--window", "1", "--samples", "1", "--max-tokens", "64", stdout=out,
    )  # fmt: skip
    assert "scored 4/4 replies" in out.getvalue() and "Written to" in out.getvalue()
    rows, _ = _rows(tmp_path / "reply_rewards.csv")
    assert len(rows) == 4 and not any(math.isnan(float(r["mr"])) for r in rows)


@pytest.mark.django_db
def test_the_command_scores_only_each_participants_first_replies_when_asked(
    study, served, tmp_path
):
    out = io.StringIO()
    call_command(
        "score_study", study.slug, "--out", str(tmp_path), "--endpoint", served.name,
        "--window", "1", "--samples", "1", "--replies", "1", stdout=out,
    )  # fmt: skip
    rows, _ = _rows(tmp_path / "reply_rewards.csv")
    assert sorted(r["turn_index"] for r in rows) == ["1", "1"]  # two participants, turn 1 each
    settings = json.loads((tmp_path / "reply_rewards_settings.json").read_text())
    assert settings["max_replies_per_participant"] == 1
    with pytest.raises(CommandError, match="at least 1"):
        call_command("score_study", study.slug, "--out", str(tmp_path), "--replies", "0")


@pytest.mark.django_db
def test_the_command_refuses_an_unknown_study_or_endpoint(study, tmp_path):
    with pytest.raises(CommandError, match="no study"):
        call_command("score_study", "no-such-study", "--out", str(tmp_path))
    with pytest.raises(CommandError, match="no endpoint named"):
        call_command("score_study", study.slug, "--out", str(tmp_path), "--judge-endpoint", "x")


@pytest.mark.django_db
def test_the_command_refuses_a_study_without_a_reply_to_score(served, tmp_path):
    empty = three_arm_study(endpoint=served)
    with pytest.raises(CommandError, match="no completed participant"):
        call_command("score_study", empty.slug, "--out", str(tmp_path))
