"""A study's real conversations as training data, and the loop: train from a study, test the
checkpoint in a follow-up draft study."""

from __future__ import annotations

import json
import uuid

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from studies.models import Study
from studies.services import participants as svc
from studies.services import turns
from tests.factories import ModelEndpointFactory, ParticipantFactory, three_arm_study
from tests.fakes.openai_server import FakeOpenAIServer
from tests.training.conftest import DOC, kind_of, user_says
from training.models import Checkpoint, TrainingRun
from training.pipeline import stages
from training.pipeline.data import read_jsonl
from training.services.followup import followup_study
from training.services.runs import run_dir
from training.services.study_collect import NOT_ASKED, NoEligibleParticipants
from training.services.work import collect

pytestmark = pytest.mark.django_db
JUDGE_4 = json.dumps({"score": 4})


def _respond(body):
    if kind_of(body) == "user":
        return user_says("more please")
    if kind_of(body) == "extractor":
        return json.dumps({"final": DOC})
    if kind_of(body) == "judge":
        return JUDGE_4
    return "sampled reply"


@pytest.fixture
def served():
    server = FakeOpenAIServer(tokens=8)
    server.responder = _respond
    base_url, stop = server.run_in_thread()
    yield ModelEndpointFactory(base_url=base_url, served_model="fake-script")
    stop()


def _participant(study, external_id, *, training: bool, n_turns: int = 2, **fields):
    p = ParticipantFactory(study=study, external_id=external_id, **fields)
    svc.participant_consent(participant_id=p.pk, training=training)
    p.refresh_from_db()
    p = _after_consent(p)
    for t in range(1, n_turns + 1):
        started = turns.turn_start(participant_id=p.pk, text=f"ask {t}", key=uuid.uuid4())
        turns.turn_complete(
            message_id=started.assistant_message.pk, text=f"real reply {t}", model="m",
            finish_reason="stop", prompt_tokens=5, completion_tokens=2,
            time_to_first_token=0.1, duration=0.3,
        )  # fmt: skip
    svc.participant_finish_chat(participant_id=p.pk)
    svc.participant_submit_final(
        participant_id=p.pk, answers=svc.FinalAnswers(DOC, 7, 8, "clear", "slow")
    )
    p.refresh_from_db()
    return p


def _after_consent(p):
    task = p.study.tasks.filter(document_type=p.document_type).first()
    svc.participant_choose_topic(participant_id=p.pk, task_id=task.pk)
    svc.participant_submit_intent(participant_id=p.pk, answers=["a", "b"])
    p.refresh_from_db()
    return p


def _study(served, *, asks: bool):
    return three_arm_study(endpoint=served, rating_every=5, min_turns=2, asks_training_consent=asks)


def _run(study, tmp_path) -> TrainingRun:
    return TrainingRun.objects.create(
        name=f"from-{study.slug}",
        base_model="/models/base",
        policy_endpoint=study.conditions.first().endpoint,
        json_mode="json_object",
        source_study=study,
        window=1,
        samples=1,
        candidates=2,
        max_turns=8,
        max_tokens=32,
        output_dir=str(tmp_path),
    )


class _Reporter:
    def __init__(self):
        self.lines = []

    def progress(self, done, total):
        pass

    def log(self, line, **_):
        self.lines.append(line)


def test_collecting_from_a_study_takes_only_consenting_participants_and_labels_real_replies(
    served, tmp_path
):
    study = _study(served, asks=True)
    agreed = _participant(study, "prolific:yes", training=True)
    _participant(study, "prolific:no", training=False)
    run = _run(study, tmp_path)

    result = collect(run, None, _Reporter())

    assert result["conversations"] == 1
    assert result["source_study"]["eligible"] == 1
    assert result["source_study"]["left_out_no_consent"] == 1
    [conv] = stages.load_conversations(run_dir(run))
    assert conv["participant_id"] == str(agreed.public_id)
    assert [t["turn_index"] for t in conv["turns"]] == [1, 2]
    for t, turn in enumerate(conv["turns"], start=1):
        assert turn["history"][-1] == {"role": "user", "content": f"ask {t}"}
        sources = [(c["source"], c["candidate"]) for c in turn["candidates"]]
        assert sources == [("participant", f"real reply {t}"), ("policy", "sampled reply")]
        assert all(c["mr"] is not None for c in turn["candidates"])
    # The chat goes on with the participant's real messages, not simulated ones.
    assert [m["content"] for m in conv["messages"] if m["role"] == "user"] == ["ask 1", "ask 2"]


def test_the_datasets_from_a_study_name_it_and_count_who_was_left_out(served, tmp_path):
    study = _study(served, asks=True)
    _participant(study, "prolific:yes", training=True)
    _participant(study, "prolific:no", training=False)
    run = _run(study, tmp_path)
    collect(run, None, _Reporter())
    conversations = stages.load_conversations(run_dir(run))
    # Tie-free scores so that every turn gives a pair: the real reply wins the first, loses the
    # second.
    scores = [(0.9, 0.1), (0.2, 0.8)]
    for turn, (real, sampled) in zip(conversations[0]["turns"], scores, strict=True):
        turn["candidates"][0]["mr"], turn["candidates"][1]["mr"] = real, sampled
    stages.write_atomically(
        stages.conversation_path(run_dir(run), conversations[0]["task_id"]), conversations[0]
    )

    counts = stages.build_datasets(run_dir(run), min_gap=0.0)

    assert counts["sft"] == 1 and counts["dpo"] == 2
    dpo = read_jsonl(run_dir(run) / "data" / "dpo" / "train.jsonl")
    assert [(r["chosen_source"], r["rejected_source"]) for r in dpo] == [
        ("participant", "policy"),
        ("policy", "participant"),
    ]
    card = (run_dir(run) / "data" / "dpo" / "README.md").read_text()
    assert f"study `{study.slug}`" in card
    assert "1 eligible, 1 left out for no consent" in card
    settings = json.loads(card.split("```json\n")[1].split("\n```")[0])
    assert settings["source_study"]["study"] == study.slug
    assert settings["replies_by_source"]["dpo_chosen_participant"] == 1
    assert settings["replies_by_source"]["dpo_rejected_participant"] == 1


def test_a_study_that_did_not_ask_for_training_consent_gives_nobody_to_train_on(served, tmp_path):
    study = _study(served, asks=False)
    _participant(study, "prolific:a", training=True)  # not asked: recorded as None
    run = _run(study, tmp_path)

    with pytest.raises(NoEligibleParticipants, match=NOT_ASKED):
        collect(run, None, _Reporter())
    assert not (run_dir(run) / "conversations").exists()


# The loop in the admin.


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _train_action(client, study):
    return client.post(
        reverse("admin:studies_study_changelist"),
        {"action": "train_from_study", ACTION_CHECKBOX_NAME: [study.pk]},
    )


def test_train_from_this_study_makes_a_draft_run_on_the_study(served):
    study = _study(served, asks=True)
    admin_user = User.objects.create_superuser("researcher", "r@example.org", "pw-r-1")

    response = _train_action(_client(admin_user), study)

    run = TrainingRun.objects.get(source_study=study)
    assert run.status == TrainingRun.Status.DRAFT
    assert run.policy_endpoint == study.conditions.order_by("id").first().endpoint
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:training_trainingrun_progress", args=[run.pk])


def test_a_study_viewer_cannot_train_from_it(served):
    study = _study(served, asks=True)
    viewer = User.objects.create_user("viewer", "v@example.org", "pw-v-1", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename="view_study"))

    client = _client(viewer)

    changelist = client.get(reverse("admin:studies_study_changelist"))
    assert changelist.status_code == 200
    assert "train_from_study" not in changelist.content.decode()
    _train_action(client, study)
    assert not TrainingRun.objects.exists()


def _checkpoint(study, tmp_path) -> Checkpoint:
    run = _run(study, tmp_path)
    return Checkpoint.objects.create(
        run=run,
        stage="dpo",
        adapter_path=str(tmp_path / "dpo"),
        adapter_name=f"collabllm-run{run.pk}-dpo",
        endpoint=ModelEndpointFactory(name=f"training-run-{run.pk}"),
    )


def test_a_followup_study_copies_the_study_and_adds_the_checkpoint_as_a_draft(served, tmp_path):
    study = _study(served, asks=True)
    checkpoint = _checkpoint(study, tmp_path)
    before = (study.status, study.conditions.count(), study.tasks.count(), study.config_version)

    followup = followup_study(checkpoint, from_study=study, by="researcher")

    assert followup.status == Study.Status.DRAFT and followup.slug == f"{study.slug}-followup-1"
    assert (followup.design, followup.min_turns, followup.rating_every) == (
        study.design,
        study.min_turns,
        study.rating_every,
    )
    assert followup.asks_training_consent and followup.completion_code != study.completion_code
    tasks = lambda s: sorted(s.tasks.values_list("document_type", "topic", "brief"))  # noqa: E731
    assert tasks(followup) == tasks(study)
    arms = dict(followup.conditions.values_list("key", "endpoint"))
    assert set(arms) == {"base", "proactive", "collabllm", f"ckpt-{checkpoint.pk}"}
    assert arms[f"ckpt-{checkpoint.pk}"] == checkpoint.endpoint_id
    assert study in followup.linked_studies.all()
    study.refresh_from_db()
    after = (study.status, study.conditions.count(), study.tasks.count(), study.config_version)
    assert after == before
    assert followup_study(checkpoint, from_study=study).slug == f"{study.slug}-followup-2"


def test_the_checkpoint_admin_offers_and_makes_the_followup(served, tmp_path):
    study = _study(served, asks=True)
    checkpoint = _checkpoint(study, tmp_path)
    client = _client(User.objects.create_superuser("researcher", "r@example.org", "pw-r-1"))

    listing = client.get(reverse("admin:training_checkpoint_changelist"))
    assert f"Follow-up study from {study}" in listing.content.decode()
    response = client.post(reverse("admin:training_checkpoint_followup", args=[checkpoint.pk]))

    followup = Study.objects.get(slug=f"{study.slug}-followup-1")
    assert response.status_code == 302 and followup.status == Study.Status.DRAFT
