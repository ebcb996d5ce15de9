"""Fixtures for the study tests: a three-arm study and participants at each step."""

import uuid

import pytest

from studies.services import participants as svc
from studies.services import reentry, turns
from tests.factories import ParticipantFactory, three_arm_study


@pytest.fixture(autouse=True)
def _own_entry_counters(monkeypatch):
    """Each test counts re-entry attempts under its own Redis keys (a window outlives a test)."""
    monkeypatch.setattr(reentry, "KEY_PREFIX", f"collabllm:test-entry:{uuid.uuid4().hex}")


@pytest.fixture
def study(db):
    return three_arm_study()


def advance_to_chat(participant):
    """Consent, choose a topic and answer the intent questions."""
    svc.participant_consent(participant_id=participant.pk)
    participant.refresh_from_db()
    task = participant.study.tasks.filter(document_type=participant.document_type).first()
    svc.participant_choose_topic(participant_id=participant.pk, task_id=task.pk)
    svc.participant_submit_intent(participant_id=participant.pk, answers=["a", "b"])
    participant.refresh_from_db()
    return participant


@pytest.fixture
def chatting(study):
    """A participant who has reached the chat."""
    return advance_to_chat(ParticipantFactory(study=study))


def new_key() -> uuid.UUID:
    return uuid.uuid4()


def complete_reply(reply, text="Sure.", ttft=0.1, duration=0.3):
    """Finish a streaming reply as the generator would (fixed token counts)."""
    return turns.turn_complete(
        message_id=reply.pk, text=text, model="m", finish_reason="stop", prompt_tokens=5,
        completion_tokens=2, time_to_first_token=ttft, duration=duration,
    )  # fmt: skip
