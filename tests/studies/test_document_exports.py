"""The document_versions table of the export: every saved version, in order, with its origin."""

import uuid

import pytest

from studies.models import Message
from studies.services import documents, exports
from studies.services import participants as svc
from tests.factories import ParticipantFactory, three_arm_study
from tests.studies.conftest import advance_to_chat
from tests.studies.test_exports import chat, read_table

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _own_save_counters(monkeypatch):
    monkeypatch.setattr(documents, "KEY_PREFIX", f"collabllm:test-document:{uuid.uuid4().hex}")


def writer(study, external_id, **fields):
    """Chats two turns, types, inserts the first reply, then submits an edited final text."""
    participant = advance_to_chat(
        ParticipantFactory(study=study, external_id=external_id, **fields)
    )
    chat(participant, 1)
    documents.document_save(
        participant_id=participant.pk, text="Notes.", base_version=0, source="typed"
    )
    chat(participant, 1)
    reply = Message.objects.filter(participant=participant, role="assistant").first()
    documents.document_save(
        participant_id=participant.pk, text="Notes.\n\nreply 1", base_version=1,
        source="inserted", from_message_id=reply.pk,
    )  # fmt: skip
    svc.participant_finish_chat(participant_id=participant.pk)
    answers = svc.FinalAnswers("Notes.\n\nreply 1, edited.", 7, 8, "clear", "slow")
    svc.participant_submit_final(participant_id=participant.pk, answers=answers)
    return participant, reply


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_the_export_has_one_row_per_version_in_order(tmp_path, fmt):
    study = three_arm_study(rating_every=0, min_turns=2)
    participant, reply = writer(study, "prolific:w1")
    writer(study, "preview-1", is_preview=True)
    result = exports.export_study(study, tmp_path / "out", fmt=fmt)
    rows, columns = read_table(result.path, "document_versions", fmt)
    assert result.row_counts["document_versions"] == 3
    assert columns[:4] == ["participant_id", "arm", "version", "source"]
    cell = str if fmt == "csv" else (lambda v: v)
    assert [(r["version"], r["source"]) for r in rows] == [
        (cell(1), "typed"), (cell(2), "inserted"), (cell(3), "final")
    ]  # fmt: skip
    assert {str(r["participant_id"]) for r in rows} == {str(participant.public_id)}
    assert rows[1]["from_message_id"] == cell(reply.pk)
    assert rows[0]["from_message_id"] in ("", None)
    assert [r["turn_index"] for r in rows] == [cell(1), cell(2), cell(2)]
    assert rows[2]["text"] == "Notes.\n\nreply 1, edited."
    assert rows[2]["chars"] == cell(len("Notes.\n\nreply 1, edited."))
    seconds = [float(r["seconds_from_chat_start"]) for r in rows]
    assert seconds == sorted(seconds) and seconds[0] >= 0
    assert rows[0]["arm"] == participant.condition.key
