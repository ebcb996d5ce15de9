"""The working document in a real browser: insert a reply, edit, reload mid-edit, edit from a
second tab, finish with the confirmation, and hand in the document on the final page."""

import os
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from studies.models import DocumentVersion, Event, Message, Participant
from tests.e2e.pages import CspWatch, enter_chat, finish_chat, scripted_study, send

pytestmark = [pytest.mark.e2e]

REPLY = "Title idea: **Reading in the rain**."
# Set to a folder to also save screenshots of the pane (wide and narrow) and the final page.
SHOTS = os.environ.get("PANE_SHOTS_DIR")


def saved(page: Page) -> None:
    expect(page.locator("#document-status")).to_have_text("Saved.", timeout=10_000)


def type_at_end(page: Page, text: str) -> None:
    area = page.locator("#document-text")
    area.focus()
    page.keyboard.press("Control+End")
    page.keyboard.type(text)


def latest(participant: Participant) -> DocumentVersion:
    return participant.document_versions.order_by("-number").first()


def shoot(page: Page, name: str, width: int) -> None:
    if not SHOTS:
        return
    page.set_viewport_size({"width": width, "height": 900})
    page.screenshot(path=str(Path(SHOTS) / f"pane-{name}.png"), full_page=True)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_a_participant_writes_the_document_beside_the_chat_and_hands_it_in(
    web_server, browsing, scripted_model
):
    study = scripted_study(scripted_model)
    scripted_model.replies.append(REPLY)
    page = browsing.page
    watch = CspWatch().attach(page.context)
    enter_chat(page, study, "doc1")
    expect(page.get_by_label("Your working document")).to_be_visible()
    send(page, "Give me a title for a post about reading.", replies=1)
    participant = Participant.objects.get(study=study, external_id="prolific:doc1")
    reply = Message.objects.get(participant=participant, role="assistant")

    # Insert the reply (its text, not its HTML), then edit.
    page.get_by_role("button", name="Insert into document").click()
    expect(page.locator("#document-text")).to_have_value(REPLY)
    saved(page)
    page.get_by_role("tab", name="Preview").click()
    expect(page.locator("#doc-preview strong")).to_have_text("Reading in the rain")
    page.get_by_role("tab", name="Preview").press("ArrowLeft")  # back to Write, by keyboard
    expect(page.get_by_role("tab", name="Write")).to_be_focused()
    expect(page.locator("#document-text")).to_be_visible()
    type_at_end(page, "\nMy own sentence.")
    saved(page)
    shoot(page, "wide", 1280)

    # Reload mid-edit: the text survives (beacon on pagehide, local copy until the server has it).
    type_at_end(page, " Unsaved words.")
    page.reload()
    expect(page.locator("#document-text")).to_have_value(
        REPLY + "\nMy own sentence. Unsaved words."
    )
    saved(page)
    assert latest(participant).text == REPLY + "\nMy own sentence. Unsaved words."

    # A second tab saves first: this tab's save is refused, kept, and the participant chooses.
    other = page.context.new_page()
    other.goto(f"/s/{study.slug}/chat/")
    other.locator("#document-text").fill("Rewritten in the other tab.")
    other.locator("#document-text").blur()
    saved(other)
    other.close()
    type_at_end(page, " From tab one.")
    conflict = page.locator("#document-conflict")
    expect(conflict).to_be_visible(timeout=10_000)
    expect(conflict).to_contain_text("This document was changed in another tab")
    mine = REPLY + "\nMy own sentence. Unsaved words. From tab one."
    refused = Event.objects.filter(participant=participant, kind="study.document.stale_refused")
    assert refused.get().payload["text"] == mine
    page.get_by_role("button", name="Keep my text").click()
    saved(page)
    assert latest(participant).text == mine

    # Narrow screens: Chat | Document tabs instead of side by side.
    page.set_viewport_size({"width": 400, "height": 900})
    expect(page.locator("#messages")).to_be_visible()
    expect(page.locator("#document-text")).to_be_hidden()
    page.get_by_role("tab", name="Document").click()
    expect(page.locator("#document-text")).to_be_visible()
    expect(page.locator("#messages")).to_be_hidden()
    expect(page.locator("#document-pane")).to_have_attribute("role", "tabpanel")
    shoot(page, "narrow", 400)
    page.get_by_role("tab", name="Document").press("ArrowLeft")  # the Chat tab, by keyboard
    expect(page.locator("#messages")).to_be_visible()
    page.set_viewport_size({"width": 1000, "height": 900})
    expect(page.get_by_role("tab", name="Document")).to_be_hidden()

    # Finishing asks first; Escape cancels.
    page.get_by_role("button", name="I am done chatting").click()
    dialog = page.get_by_role("dialog", name="Finish the chat?")
    expect(dialog).to_be_visible()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert "/chat/" in page.url
    page.get_by_role("button", name="I am done chatting").click()
    dialog.get_by_role("button", name="Yes, finish the chat").click()

    # The final page: the transcript read-only and the document, still editable.
    page.wait_for_url(f"**/s/{study.slug}/final/")
    expect(page.locator("#transcript strong")).to_have_text("Reading in the rain")
    document = page.get_by_label("Your final document")
    expect(document).to_have_value(mine)
    shoot(page, "final", 1280)
    page.set_viewport_size({"width": 1000, "height": 900})
    page.locator('input[name="document_quality"][value="8"]').check()
    page.locator('input[name="overall_interaction"][value="9"]').check()
    page.get_by_label("What did the assistant do well?").fill("Titles.")
    page.get_by_label("What could the assistant do better?").fill("Nothing.")
    type_at_end(page, "\nThe end.")  # submitted before the autosave: stored as the final version
    page.get_by_role("button", name="Submit").click()
    expect(page.locator("#completion-code")).to_have_text(study.completion_code)
    key = page.evaluate("document.body.dataset.draftKey") + ":document"
    page.wait_for_function("(k) => localStorage.getItem(k) === null", arg=key)
    assert browsing.errors == [] and watch.violations == []

    rows = list(participant.document_versions.order_by("number"))
    sources = [v.source for v in rows]
    assert sources[0] == "inserted" and rows[0].from_message_id == reply.pk
    assert rows[0].text == REPLY and rows[0].turn_index == 1
    assert sources[-1] == "final" and rows[-1].text == mine + "\nThe end."
    assert set(sources[1:-1]) == {"typed"}
    assert [v.number for v in rows] == list(range(1, len(rows) + 1))
    participant.refresh_from_db()
    assert participant.final_survey.document_text == rows[-1].text


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_on_a_narrow_screen_a_due_rating_brings_the_chat_tab_forward(
    web_server, browsing, scripted_model
):
    study = scripted_study(scripted_model, rating_every=1)
    scripted_model.replies.append(" ".join(["word"] * 80))  # about 1.2 s of streaming
    page = browsing.page
    page.set_viewport_size({"width": 400, "height": 900})
    enter_chat(page, study, "doc2")
    page.locator("#composer-text").fill("A long answer, please.")
    page.get_by_role("button", name="Send").click()
    page.get_by_role("tab", name="Document").click()
    expect(page.locator("#document-text")).to_be_visible()
    expect(page.locator("#rating")).to_be_visible(timeout=30_000)
    expect(page.get_by_role("tab", name="Chat")).to_have_attribute("aria-selected", "true")
    expect(page.locator('#rating button[data-score="1"]')).to_be_focused()
    assert browsing.errors == []


def answer_the_survey(page: Page) -> None:
    page.locator('input[name="document_quality"][value="8"]').check()
    page.locator('input[name="overall_interaction"][value="9"]').check()
    page.get_by_label("What did the assistant do well?").fill("Titles.")
    page.get_by_label("What could the assistant do better?").fill("Nothing.")


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_a_final_page_left_behind_by_another_tab_is_not_submitted_over_its_text(
    web_server, browsing, scripted_model
):
    study = scripted_study(scripted_model)
    scripted_model.replies.append(REPLY)
    page = browsing.page
    enter_chat(page, study, "doc3")
    send(page, "Give me a title for a post about reading.", replies=1)
    type_at_end(page, "My draft.")
    saved(page)
    finish_chat(page)
    participant = Participant.objects.get(study=study, external_id="prolific:doc3")

    other = page.context.new_page()  # a second tab on the final page edits and saves first
    other.goto(f"/s/{study.slug}/final/")
    type_at_end(other, " Finished in the other tab.")
    other.locator("#document-text").blur()
    saved(other)
    other.close()

    answer_the_survey(page)  # this tab, untouched since it loaded, is submitted
    page.get_by_role("button", name="Submit").click()
    conflict = page.locator("#document-conflict")
    expect(conflict).to_be_visible(timeout=10_000)
    expect(page.locator("#document-newer")).to_have_text("My draft. Finished in the other tab.")
    participant.refresh_from_db()
    assert participant.status == "final"
    page.get_by_role("button", name="Use the newer text").click()
    expect(page.locator("#document-text")).to_have_value("My draft. Finished in the other tab.")
    answer_the_survey(page)
    page.get_by_role("button", name="Submit").click()
    expect(page.locator("#completion-code")).to_have_text(study.completion_code)
    assert browsing.errors == []
    participant.refresh_from_db()
    assert participant.final_survey.document_text == "My draft. Finished in the other tab."
    assert participant.document_versions.last().text == "My draft. Finished in the other tab."


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_an_insert_whose_save_failed_is_still_recorded_as_the_insert_of_its_reply(
    web_server, browsing, scripted_model
):
    study = scripted_study(scripted_model)
    scripted_model.replies.append(REPLY)
    page = browsing.page
    enter_chat(page, study, "doc4")
    send(page, "Give me a title for a post about reading.", replies=1)
    participant = Participant.objects.get(study=study, external_id="prolific:doc4")
    reply = Message.objects.get(participant=participant, role="assistant")
    dropped = []

    def drop_the_first_insert(route):
        if not dropped and "inserted" in (route.request.post_data or ""):
            dropped.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    page.route("**/document/", drop_the_first_insert)
    page.get_by_role("button", name="Insert into document").click()
    expect(page.locator("#document-status")).to_contain_text("no connection")
    type_at_end(page, " And mine.")  # typing before the retry must not hide the insert
    saved(page)
    assert dropped
    rows = list(participant.document_versions.order_by("number"))
    assert rows[0].source == "inserted" and rows[0].from_message_id == reply.pk
    assert rows[-1].text == REPLY + " And mine."
