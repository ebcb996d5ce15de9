"""The participant's working document: versioned saves, stale saves refused without loss."""

import os
import subprocess
import sys
import uuid

import pytest
from redis.exceptions import RedisError

from studies.models import DocumentVersion, Event, Message, Participant
from studies.services import documents, erasure, turns
from studies.services import participants as svc
from studies.services.errors import StudyActionError
from tests.factories import ParticipantFactory
from tests.studies.conftest import advance_to_chat, complete_reply, new_key

pytestmark = pytest.mark.django_db

S = DocumentVersion.Source


@pytest.fixture(autouse=True)
def _own_save_counters(monkeypatch):
    """Each test counts saves under its own Redis keys (a window outlives a test)."""
    monkeypatch.setattr(documents, "KEY_PREFIX", f"collabllm:test-document:{uuid.uuid4().hex}")


def save(participant, text, base, source=S.TYPED, **kw):
    return documents.document_save(
        participant_id=participant.pk, text=text, base_version=base, source=source, **kw
    )


def reply_of(participant, text="Here is a draft."):
    started = turns.turn_start(participant_id=participant.pk, text="Help me", key=new_key())
    complete_reply(started.assistant_message, text=text)
    return Message.objects.get(pk=started.assistant_message.pk)


def test_saves_number_versions_from_one_and_record_the_completed_turns(chatting):
    assert save(chatting, "First words.", 0).number == 1
    reply_of(chatting)
    second = save(chatting, "First words. More.", 1)
    assert second.number == 2
    rows = list(chatting.document_versions.values_list("number", "text", "turn_index", "source"))
    assert rows == [(1, "First words.", 0, "typed"), (2, "First words. More.", 1, "typed")]


def test_a_stale_save_is_refused_with_the_latest_and_its_text_is_kept_in_an_event(chatting):
    save(chatting, "Tab A text.", 0)
    with pytest.raises(documents.DocumentStale) as refused:
        save(chatting, "Tab B text.", 0)
    assert refused.value.latest_number == 1
    assert refused.value.latest_text == "Tab A text."
    assert chatting.document_versions.count() == 1
    event = Event.objects.get(participant=chatting, kind="study.document.stale_refused")
    assert event.payload["text"] == "Tab B text."
    assert event.payload["base_version"] == 0 and event.payload["latest_version"] == 1


def test_a_stale_save_of_the_latest_text_is_no_conflict(chatting):
    save(chatting, "Same.", 0)
    assert save(chatting, "Same.", 0).number == 1
    assert not Event.objects.filter(kind="study.document.stale_refused").exists()


def test_an_unchanged_text_creates_no_row(chatting):
    save(chatting, "Hello.", 0)
    assert save(chatting, "Hello.", 1).number == 1
    assert chatting.document_versions.count() == 1


def test_crlf_and_cr_are_normalised_to_lf(chatting):
    version = save(chatting, "one\r\ntwo\rthree", 0)
    assert version.text == "one\ntwo\nthree"
    assert save(chatting, "one\ntwo\nthree", 1).number == 1


def test_a_text_over_the_limit_is_refused_and_changes_nothing(chatting):
    with pytest.raises(StudyActionError) as refused:
        save(chatting, "x" * (svc.MAX_DOCUMENT_CHARS + 1), 0)
    assert refused.value.code == "too_long"
    assert not chatting.document_versions.exists()


def test_saves_beyond_the_rate_bound_are_refused(chatting, monkeypatch):
    monkeypatch.setattr(documents, "SAVES_PER_WINDOW", 3)
    for i in range(3):
        save(chatting, f"text {i}", i)
    with pytest.raises(StudyActionError) as refused:
        save(chatting, "text 3", 3)
    assert refused.value.code == "too_many"
    assert chatting.document_versions.count() == 3


def test_saves_are_allowed_when_redis_is_away(chatting, monkeypatch):
    def away(timeout):
        raise RedisError("down")

    monkeypatch.setattr(documents, "redis_client", away)
    assert save(chatting, "Still saved.", 0).number == 1


def test_saving_before_the_chat_is_refused(study):
    participant = ParticipantFactory(study=study)
    with pytest.raises(StudyActionError) as refused:
        save(participant, "Too early.", 0)
    assert refused.value.code == "wrong_step"
    assert not DocumentVersion.objects.exists()


def test_saving_after_completion_is_refused(chatting):
    chatting.status = Participant.Status.COMPLETED
    chatting.save(update_fields=["status"])
    with pytest.raises(StudyActionError):
        save(chatting, "Too late.", 0)
    assert not DocumentVersion.objects.exists()


def test_saving_on_the_final_step_and_late_final_is_allowed(chatting):
    chatting.status = Participant.Status.TIMED_OUT
    chatting.chat_finished_at = chatting.chat_started_at
    chatting.save(update_fields=["status", "chat_finished_at"])
    assert save(chatting, "Late but mine.", 0).number == 1


def test_an_inserted_reply_is_recorded_with_its_message(chatting):
    reply = reply_of(chatting)
    version = save(chatting, reply.content, 0, S.INSERTED, from_message_id=reply.pk)
    assert (version.source, version.from_message_id) == ("inserted", reply.pk)


def test_another_participants_reply_cannot_be_inserted(chatting, study):
    other = advance_to_chat(ParticipantFactory(study=study))
    foreign = reply_of(other, "Their reply.")
    with pytest.raises(StudyActionError) as refused:
        save(chatting, "Their reply.", 0, S.INSERTED, from_message_id=foreign.pk)
    assert refused.value.code == "bad_message"
    assert not DocumentVersion.objects.exists()


def test_an_insert_needs_a_message(chatting):
    with pytest.raises(StudyActionError):
        save(chatting, "text", 0, S.INSERTED)


def test_the_final_source_is_not_accepted_from_the_pane(chatting):
    with pytest.raises(StudyActionError) as refused:
        save(chatting, "text", 0, S.FINAL)
    assert refused.value.code == "bad_source"


def test_document_latest_is_the_highest_number(chatting):
    assert documents.document_latest(chatting) is None
    save(chatting, "a", 0)
    save(chatting, "ab", 1)
    assert documents.document_latest(chatting).text == "ab"


def test_erasure_removes_the_versions(chatting):
    reply = reply_of(chatting)
    save(chatting, reply.content, 0, S.INSERTED, from_message_id=reply.pk)
    record = erasure.participant_erase(participant_id=chatting.pk, requested_by="dpo", reason="x")
    assert record.erased_rows["studies.DocumentVersion"] == 1
    assert not DocumentVersion.objects.exists()


def test_the_document_service_can_be_imported_first():
    """A worker or command importing it before the participants package must not fail on the
    participants -> final -> documents cycle."""
    code = "import django; django.setup(); import studies.services.documents"
    run = subprocess.run([sys.executable, "-c", code], env=os.environ.copy(), capture_output=True)
    assert run.returncode == 0, run.stderr.decode()[-500:]
