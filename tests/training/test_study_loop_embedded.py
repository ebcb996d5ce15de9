"""The first half of the closed loop on the real embedded model (SmolLM2 in every role): a study's
completed conversations are scored with the multiturn-aware reward, exported, and the report
relates the rewards to the participants' ratings."""

from __future__ import annotations

import csv
import io
import math
import uuid

import pytest
from django.core.management import call_command

from analysis.report import build_report
from studies.services import exports, turns
from studies.services import participants as svc
from tests.factories import ModelEndpointFactory, ParticipantFactory, three_arm_study

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), pytest.mark.django_db]


def test_a_study_is_scored_on_the_embedded_model_and_the_report_relates_mr_to_ratings(
    embedded_model, tmp_path
):
    endpoint = ModelEndpointFactory(
        base_url=embedded_model.base_url,
        served_model=embedded_model.model,
        server="llama_cpp",
        read_timeout=300,
    )
    study = three_arm_study(endpoint=endpoint, rating_every=1, min_turns=2)
    people = [rated_participant(study, f"prolific:p{i}", score=4 + 2 * i) for i in range(3)]
    export = tmp_path / "export"
    exports.export_study(study, export, fmt="csv")

    call_command(
        "score_study", study.slug, "--out", str(export), "--endpoint", endpoint.name,
        "--window", "1", "--samples", "1", "--max-tokens", "48", stdout=io.StringIO(),
    )  # fmt: skip
    with (export / "reply_rewards.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))

    assert len(rows) == 2 * len(people)  # one row per reply, scored or with its reason
    assert {r["participant_id"] for r in rows} == {str(p.public_id) for p in people}
    for row in rows:  # a reply is scored with every term, or its failure is said, never 0-filled
        if row["error"]:
            assert row["mr"] == ""
        else:
            terms = [float(row[t]) for t in ("mr", "task", "penalty", "interactivity")]
            assert all(math.isfinite(v) for v in terms)

    summary = build_report(export, tmp_path / "report", n_boot=100, workers=1)
    section = summary["reward_agreement"]
    assert section["replies"][0]["n_replies"] == len(rows)
    # Three participants are too few: the report says so instead of printing a correlation.
    checkpoint = [r for r in section["checkpoints"] if r["arm"] == "all" and r["term"] == "mr"]
    assert checkpoint and all(not r["enough"] and r["rho"] is None for r in checkpoint)
    assert all("too few" in r["why"] for r in checkpoint)
    assert "Does the reward agree with people?" in (tmp_path / "report" / "report.html").read_text()


def rated_participant(study, external_id: str, *, score: int, turns_done: int = 2, training=False):
    """A participant who chats about a short blog post, rates each turn (when the study asks
    after every turn) and hands in a document; `training`: ticks the training-use box."""
    p = ParticipantFactory(study=study, external_id=external_id)
    svc.participant_consent(participant_id=p.pk, training=training)
    p.refresh_from_db()
    task = study.tasks.filter(document_type=p.document_type).first()
    svc.participant_choose_topic(participant_id=p.pk, task_id=task.pk)
    svc.participant_submit_intent(participant_id=p.pk, answers=["friends", "warm"])
    asks = ["Help me write a short blog post about rain.", "Make it friendlier, please."]
    replies = ["Rain sounds calm on the roof at night.", "Rain is a friendly, calm visitor."]
    for t in range(1, turns_done + 1):
        started = turns.turn_start(participant_id=p.pk, text=asks[t - 1], key=uuid.uuid4())
        turns.turn_complete(
            message_id=started.assistant_message.pk, text=replies[t - 1], model="m",
            finish_reason="stop", prompt_tokens=5, completion_tokens=8,
            time_to_first_token=0.1, duration=0.3,
        )  # fmt: skip
        if study.rating_every == 1:
            turns.rating_record(participant_id=p.pk, after_turn=t, score=score)
    svc.participant_finish_chat(participant_id=p.pk)
    document = "Rain is a friendly, calm visitor that sounds soft on the roof at night."
    svc.participant_submit_final(
        participant_id=p.pk, answers=svc.FinalAnswers(document, score, score, "kind", "short")
    )
    p.refresh_from_db()
    return p
