"""The document endpoints and pages, driven with Django's test client."""

import uuid

import pytest
from django.test import Client

from studies.models import DocumentVersion, Event, Message
from studies.services import documents
from studies.services import participants as svc
from tests.factories import three_arm_study
from tests.studies.test_flow import finish_turns, to_chat, url

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _own_save_counters(monkeypatch):
    monkeypatch.setattr(documents, "KEY_PREFIX", f"collabllm:test-document:{uuid.uuid4().hex}")


@pytest.fixture
def study():
    return three_arm_study()


def post(client, study, text, base, source="typed", **extra):
    data = {"text": text, "base_version": str(base), "source": source, **extra}
    return client.post(url("document", study), data)


def test_a_save_answers_the_new_version(client, study):
    participant = to_chat(client, study)
    response = post(client, study, "My first line.", 0)
    assert response.status_code == 200 and response.json() == {"version": 1}
    assert participant.document_versions.get().text == "My first line."


def test_a_stale_save_answers_409_with_the_latest_version_and_text(client, study):
    participant = to_chat(client, study)
    post(client, study, "From tab one.", 0)
    response = post(client, study, "From tab two.", 0)
    assert response.status_code == 409
    body = response.json()
    assert (body["version"], body["text"]) == (1, "From tab one.")
    assert "another tab" in body["message"]
    assert participant.document_versions.count() == 1
    refused = Event.objects.get(participant=participant, kind="study.document.stale_refused")
    assert refused.payload["text"] == "From tab two."


def strict_client(study):
    """A participant at the chat, and a client of their session that enforces CSRF."""
    walker = Client()
    participant = to_chat(walker, study)
    client = Client(enforce_csrf_checks=True)
    client.cookies = walker.cookies
    return participant, client


def test_a_save_without_a_csrf_token_is_refused(study):
    participant, client = strict_client(study)
    response = post(client, study, "text", 0)
    assert response.status_code == 403
    assert not participant.document_versions.exists()


def test_a_save_with_the_csrf_form_field_is_accepted_as_a_beacon_sends_it(study):
    participant, client = strict_client(study)
    token = client.get(url("chat", study)).context["csrf_token"]
    response = client.post(
        url("document", study),
        {"text": "kept", "base_version": "0", "source": "typed", "csrfmiddlewaretoken": token},
    )
    assert response.status_code == 200
    assert participant.document_versions.get().text == "kept"


def test_a_save_without_a_session_is_refused_and_stores_nothing(study):
    to_chat(Client(), study)
    response = post(Client(), study, "forged", 0)
    assert response.status_code == 403 and "message" in response.json()
    assert not DocumentVersion.objects.exists()


def test_a_session_saves_only_its_own_participants_document(study):
    owner = Client()
    first = to_chat(owner, study)
    post(owner, study, "Owner's text.", 0)
    foreign_reply = Message.objects.create(
        participant=first, turn_index=1, role="assistant", status="complete", content="Owner's"
    )
    stranger = Client()
    stranger.get(url("entry", study), {"PROLIFIC_PID": "p2", "STUDY_ID": "s", "SESSION_ID": "y"})
    stranger.post(url("consent", study), {"choice": "agree"})
    response = post(stranger, study, "Owner's", 0, "inserted", from_message_id=foreign_reply.pk)
    assert response.status_code == 400
    assert list(first.document_versions.values_list("text", flat=True)) == ["Owner's text."]


def test_a_text_over_the_limit_answers_413(client, study):
    participant = to_chat(client, study)
    response = post(client, study, "x" * (svc.MAX_DOCUMENT_CHARS + 1), 0)
    assert response.status_code == 413 and "limited" in response.json()["message"]
    assert not participant.document_versions.exists()


def test_a_bad_base_version_answers_400(client, study):
    to_chat(client, study)
    assert post(client, study, "text", "x").status_code == 400


def test_the_preview_renders_sanitised_markdown(client, study):
    to_chat(client, study)
    response = client.post(url("document_preview", study), {"text": "**bold** <script>x</script>"})
    html = response.json()["html"]
    assert "<strong>bold</strong>" in html and "<script>" not in html


def test_previews_beyond_the_rate_bound_answer_429(client, study, monkeypatch):
    to_chat(client, study)
    monkeypatch.setattr(documents, "SAVES_PER_WINDOW", 2)
    answers = [client.post(url("document_preview", study), {"text": "x" * 1000}) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert answers[-1].json()["message"] and "html" not in answers[-1].json()


def test_the_preview_needs_the_session(study):
    response = Client().post(url("document_preview", study), {"text": "x"})
    assert response.status_code == 403


def test_the_chat_page_shows_the_pane_with_the_latest_text(client, study):
    to_chat(client, study)
    post(client, study, "Saved & sound.", 0)
    page = client.get(url("chat", study)).content.decode()
    assert 'id="document-pane"' in page and 'data-version="1"' in page
    assert "Saved &amp; sound.</textarea>" in page


def test_the_final_page_shows_the_transcript_and_the_document(client, study):
    participant = to_chat(client, study)
    finish_turns(participant, study.min_turns)
    post(client, study, "Draft from the chat.", 0)
    client.post(url("finish", study))
    page = client.get(url("final", study)).content.decode()
    assert "Draft from the chat.</textarea>" in page
    assert page.count('class="message user"') == study.min_turns
    assert page.count('class="message assistant"') == study.min_turns
    assert "Paste" not in page and "paste" not in page


def test_submitting_the_final_page_stores_the_document_as_the_last_version(client, study):
    participant = to_chat(client, study)
    finish_turns(participant, study.min_turns)
    post(client, study, "Draft.", 0)
    client.post(url("finish", study))
    post(client, study, "Draft, edited on the final page.", 1)
    response = client.post(url("final", study), {
        "document_text": "Draft, edited on the final page.\r\nDone.", "document_quality": "8",
        "overall_interaction": "9", "strengths": "s", "weaknesses": "w",
    })  # fmt: skip
    assert response.url == url("done", study)
    rows = list(participant.document_versions.values_list("number", "source", "text"))
    final_text = "Draft, edited on the final page.\nDone."
    assert rows[-1] == (3, "final", final_text)
    participant.refresh_from_db()
    assert participant.final_survey.document_text == final_text


def test_an_unchanged_final_document_adds_no_version(client, study):
    participant = to_chat(client, study)
    finish_turns(participant, study.min_turns)
    post(client, study, "Done already.", 0)
    client.post(url("finish", study))
    client.post(url("final", study), {
        "document_text": "Done already.", "document_quality": "8", "overall_interaction": "9",
        "strengths": "s", "weaknesses": "w",
    })  # fmt: skip
    assert list(participant.document_versions.values_list("source", flat=True)) == ["typed"]


def test_saves_beyond_the_rate_bound_answer_429(client, study, monkeypatch):
    participant = to_chat(client, study)
    monkeypatch.setattr(documents, "SAVES_PER_WINDOW", 1)
    post(client, study, "one", 0)
    response = post(client, study, "two", 1)
    assert response.status_code == 429 and response.json()["message"]
    assert participant.document_versions.count() == 1


def test_a_save_after_completion_answers_400_and_changes_nothing(client, study):
    participant = to_chat(client, study)
    finish_turns(participant, study.min_turns)
    client.post(url("finish", study))
    client.post(url("final", study), {
        "document_text": "Handed in.", "document_quality": "8", "overall_interaction": "9",
        "strengths": "s", "weaknesses": "w",
    })  # fmt: skip
    response = post(client, study, "Afterthought.", 1)
    assert response.status_code == 400
    assert list(participant.document_versions.values_list("text", flat=True)) == ["Handed in."]


def to_final_with_a_newer_version_from_another_tab(client, study):
    """The final page loaded at version 1; then another tab saved version 2."""
    participant = to_chat(client, study)
    finish_turns(participant, study.min_turns)
    post(client, study, "Draft.", 0)
    client.post(url("finish", study))
    assert 'id="document-version" value="1"' in client.get(url("final", study)).content.decode()
    post(client, study, "Finished in the other tab.", 1)
    return participant


def final_answers(text, version):
    return {
        "document_text": text, "document_version": str(version), "document_quality": "8",
        "overall_interaction": "9", "strengths": "s", "weaknesses": "w",
    }  # fmt: skip


def test_a_final_submission_from_a_stale_page_is_refused_with_the_newer_text(client, study):
    participant = to_final_with_a_newer_version_from_another_tab(client, study)
    response = client.post(url("final", study), final_answers("Draft.", 1))
    assert response.status_code == 400
    page = response.content.decode()
    assert "Finished in the other tab.</pre>" in page and "Draft.</textarea>" in page
    assert 'data-newer-version="2"' in page and 'data-version="1"' in page
    participant.refresh_from_db()
    assert participant.status == "final" and not hasattr(participant, "final_survey")
    assert list(participant.document_versions.values_list("text", flat=True)) == [
        "Draft.",
        "Finished in the other tab.",
    ]
    refused = Event.objects.get(participant=participant, kind="study.document.stale_refused")
    assert refused.payload["text"] == "Draft." and refused.payload["source"] == "final"


def test_a_final_submission_on_the_latest_version_after_the_conflict_is_accepted(client, study):
    participant = to_final_with_a_newer_version_from_another_tab(client, study)
    client.post(url("final", study), final_answers("Draft.", 1))
    response = client.post(url("final", study), final_answers("Draft.", 2))
    assert response.url == url("done", study)
    assert participant.document_versions.order_by("-number").first().text == "Draft."
    assert participant.document_versions.last().source == "final"


def test_a_document_at_the_limit_saved_by_the_pane_can_be_handed_in_as_browsers_send_it(
    client, study
):
    participant = to_chat(client, study)
    finish_turns(participant, study.min_turns)
    text = ("w" * 99 + "\n") * (documents.MAX_DOCUMENT_CHARS // 100)
    assert post(client, study, text, 0).status_code == 200
    client.post(url("finish", study))
    as_sent = text.strip().replace("\n", "\r\n")  # a form's textarea is sent with CRLF line ends
    response = client.post(url("final", study), final_answers(as_sent, 1))
    assert response.status_code == 302
    participant.refresh_from_db()
    assert participant.final_survey.document_text == text.strip()
