"""Participant records are not deletable by accident; erase_participant is the recorded way."""

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db.models import ProtectedError
from django.test import Client
from django.urls import reverse

from studies.models import ErasureRecord, Event, IntentAnswer, Message, Participant, Study
from studies.services import turns
from studies.services.exports import pseudonym
from tests.factories import ModelEndpointFactory, ParticipantFactory
from tests.studies.conftest import advance_to_chat, complete_reply, new_key
from training.models import TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser() -> User:
    return User.objects.create_superuser("root", "root@example.org", "pw-root-1")


@pytest.fixture
def chatted(study) -> Participant:
    participant = advance_to_chat(ParticipantFactory(study=study, external_id="prolific:ABC123"))
    reply = turns.turn_start(participant_id=participant.pk, text="Draft my post", key=new_key())
    complete_reply(reply.assistant_message, text="Here is a draft")
    return participant


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_superuser_gets_no_delete_action_or_page_for_participants(superuser, chatted, rf):
    request = rf.get("/admin/studies/participant/")
    request.user = superuser
    assert "delete_selected" not in admin.site._registry[Participant].get_actions(request)
    client = _client(superuser)
    url = reverse("admin:studies_participant_delete", args=[chatted.pk])
    assert client.get(url).status_code == 403
    assert client.post(url, {"post": "yes"}).status_code == 403
    response = client.post(
        reverse("admin:studies_participant_changelist"),
        {"action": "delete_selected", "_selected_action": [chatted.pk], "post": "yes"},
    )
    assert response.status_code == 302
    assert Participant.objects.filter(pk=chatted.pk).exists()


def test_a_study_with_participants_cannot_be_deleted_in_the_admin(superuser, chatted):
    client = _client(superuser)
    url = reverse("admin:studies_study_delete", args=[chatted.study_id])
    assert client.post(url, {"post": "yes"}).status_code == 403
    assert Study.objects.filter(pk=chatted.study_id).exists()


def test_deleting_a_participant_with_messages_raises_protected_error(chatted):
    with pytest.raises(ProtectedError):
        chatted.delete()
    assert Message.objects.filter(participant=chatted).count() == 2


def test_deleting_a_training_run_with_stages_raises_protected_error(tmp_path):
    run = TrainingRun.objects.create(
        name="r", base_model="/m", policy_endpoint=ModelEndpointFactory(), output_dir=str(tmp_path)
    )
    run.stage_rows.create(name="collect", position=0)
    with pytest.raises(ProtectedError):
        run.delete()


def test_erase_participant_deletes_their_rows_and_records_who_when_and_why(chatted, study):
    other = advance_to_chat(ParticipantFactory(study=study))
    call_command(
        "erase_participant", study.slug, "prolific:ABC123",
        "--requested-by", "dpo@example.org", "--reason", "Request #42",
    )  # fmt: skip
    assert not Participant.objects.filter(pk=chatted.pk).exists()
    assert not Message.objects.filter(participant_id=chatted.pk).exists()
    assert not IntentAnswer.objects.filter(participant_id=chatted.pk).exists()
    assert not Event.objects.filter(participant_id=chatted.pk).exists()
    record = ErasureRecord.objects.get()
    assert record.requested_by == "dpo@example.org" and record.reason == "Request #42"
    assert record.participant_pseudonym == pseudonym("prolific:ABC123")
    assert record.erased_rows["studies.Message"] == 2 and record.created_at is not None
    event = Event.objects.get(kind="study.participant.erased")
    assert event.participant_id is None and "ABC123" not in str(event.payload)
    assert event.payload["by"] == "dpo@example.org"
    assert IntentAnswer.objects.filter(participant=other).count() == 2


def test_erase_participant_finds_a_participant_by_the_platforms_id_alone(chatted, study):
    call_command(
        "erase_participant", study.slug, "ABC123", "--requested-by", "dpo", "--reason", "r"
    )
    assert not Participant.objects.filter(pk=chatted.pk).exists()


def test_erase_participant_finds_a_participant_by_id(chatted, study):
    call_command(
        "erase_participant", study.slug, str(chatted.pk), "--requested-by", "dpo", "--reason", "r"
    )
    assert not Participant.objects.filter(pk=chatted.pk).exists()


@pytest.mark.parametrize(
    "extra", [["--requested-by", "dpo"], ["--requested-by", "dpo", "--reason", "  "]]
)
def test_erase_participant_refuses_without_a_reason_and_changes_nothing(chatted, study, extra):
    with pytest.raises(CommandError):
        call_command("erase_participant", study.slug, "prolific:ABC123", *extra)
    assert Participant.objects.filter(pk=chatted.pk).exists()
    assert Message.objects.filter(participant=chatted).count() == 2
    assert not ErasureRecord.objects.exists()


def test_erase_participant_refuses_an_unknown_participant(study):
    with pytest.raises(CommandError, match="no participant"):
        call_command(
            "erase_participant", study.slug, "nobody", "--requested-by", "dpo", "--reason", "r"
        )
