"""Free text is stored with normalised newlines: browsers send a textarea's lines as CRLF."""

import pytest

from studies.forms import FreeTextField
from studies.models import IntentAnswer, Message
from studies.services import turns
from tests.studies.conftest import new_key
from tests.studies.test_flow import finish_turns, to_brief, to_chat, url

pytestmark = pytest.mark.django_db


def test_intent_answers_typed_over_lines_are_stored_with_plain_newlines(client, study):
    participant = to_brief(client, study)
    task = study.tasks.filter(document_type=participant.document_type).first()
    client.post(url("brief", study), {"task": task.pk})
    response = client.post(url("brief", study), {"q0": "for\r\nfriends", "q1": "warm\rand\r\nkind"})
    assert response.url == url("chat", study)
    answers = IntentAnswer.objects.filter(participant=participant).order_by("question_index")
    assert [a.answer for a in answers] == ["for\nfriends", "warm\nand\nkind"]


def test_the_final_survey_texts_are_stored_with_plain_newlines(client, study):
    participant = to_chat(client, study)
    finish_turns(participant, study.min_turns)
    client.post(url("finish", study))
    response = client.post(
        url("final", study),
        {
            "document_text": "Title\r\n\r\nFirst paragraph.\r\nSecond line.",
            "document_quality": "8",
            "overall_interaction": "9",
            "strengths": "asked\r\nquestions",
            "weaknesses": "slow\r\n",
        },
    )
    assert response.url == url("done", study)
    survey = participant.__class__.objects.get(pk=participant.pk).final_survey
    assert survey.document_text == "Title\n\nFirst paragraph.\nSecond line."
    assert (survey.strengths, survey.weaknesses) == ("asked\nquestions", "slow")


def test_a_chat_message_is_stored_with_plain_newlines(chatting):
    started = turns.turn_start(participant_id=chatting.pk, text="one\r\ntwo\rthree", key=new_key())
    assert Message.objects.get(pk=started.user_message.pk).content == "one\ntwo\nthree"


def test_a_crlf_counts_as_one_character_against_the_form_limit():
    field = FreeTextField(max_length=5)
    assert field.clean("a\r\nb\r\nc") == "a\nb\nc"
