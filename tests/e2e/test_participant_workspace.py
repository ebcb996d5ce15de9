"""The whole participant workspace in one browser visit: a Markdown consent text, the brief, the
chat with the document pane, a reply cut at the token limit and continued, a reply inserted into
the document, the rating radio group, the finish confirmation, the final page with the transcript
and the document, and the code page. axe checks every step; with WORKSPACE_SHOTS_DIR set, each
step is also saved as a screenshot (the closing note of the workspace describes them)."""

import os
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from studies.models import DocumentVersion, Message, Participant
from tests.e2e.a11y import assert_accessible
from tests.e2e.pages import CspWatch, scripted_study

pytestmark = [pytest.mark.e2e]

SHOTS = os.environ.get("WORKSPACE_SHOTS_DIR")
CONSENT = "You are invited to a study.\n\n- Your chat is recorded.\n- You may stop at any time."
CUT = "!length Here is an opening line: the rain kept"
REST = "falling on the old library roof all night."
SECOND = "A closing line: **and the books stayed dry**."


def step(page: Page, name: str) -> None:
    """axe on the page as it is now (0 serious or critical), and its screenshot if asked for."""
    assert_accessible(page, name)
    if SHOTS:
        index = len(list(Path(SHOTS).glob("*.png"))) + 1
        page.screenshot(path=str(Path(SHOTS) / f"{index:02d}-{name}.png"), full_page=True)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(240)
def test_a_participant_walks_the_whole_workspace(web_server, browsing, scripted_model):
    study = scripted_study(scripted_model, min_turns=2, rating_every=2, consent_text=CONSENT)
    scripted_model.replies += [CUT, REST, SECOND]
    page = browsing.page
    page.set_viewport_size({"width": 1280, "height": 900})
    watch = CspWatch().attach(page.context)

    page.goto(f"/s/{study.slug}/?PROLIFIC_PID=ws1&STUDY_ID=s&SESSION_ID=sess-ws1")
    expect(page.locator(".prose li")).to_have_count(2)  # the consent text's list, as a list
    step(page, "consent")
    page.get_by_role("button", name="I agree").click()
    step(page, "brief-topic")
    page.locator('input[name="task"]').first.check()
    page.get_by_role("button", name="Continue").click()
    answers = page.locator("#brief-step textarea")
    expect(answers.first).to_be_visible()
    for i in range(answers.count()):
        answers.nth(i).fill(f"Answer {i + 1}.")
    step(page, "brief-intent")
    page.get_by_role("button", name="Start the conversation").click()
    expect(page.locator('#chat[data-connected="true"]')).to_be_attached()
    expect(page.get_by_label("Your working document")).to_be_visible()
    step(page, "chat-empty")

    # Turn 1: the reply stops at the token limit; Continue asks for the rest on the same turn.
    page.locator("#composer-text").fill("Give me an opening line about rain.")
    page.get_by_role("button", name="Send").click()
    notice = page.locator(".cut-notice")
    expect(notice).to_contain_text("cut off at the length limit", timeout=30_000)
    step(page, "chat-cut-reply")
    notice.get_by_role("button", name="Continue", exact=True).click()
    continued = page.locator("li.message.assistant.continued")
    expect(continued).to_have_attribute("data-status", "complete", timeout=30_000)
    expect(page.locator("#progress")).to_contain_text("Turns completed: 1 ")
    step(page, "chat-continued")

    # Both parts go into the document, each recorded with the message it came from.
    replies = page.locator('li.message.assistant[data-status="complete"]')
    replies.nth(0).get_by_role("button", name="Insert into document").click()
    replies.nth(1).get_by_role("button", name="Insert into document").click()
    area = page.locator("#document-text")
    expect(area).to_have_value("Here is an opening line: the rain kept\n\n" + REST)
    expect(page.locator("#document-status")).to_have_text("Saved.", timeout=10_000)

    # Turn 2 opens the rating: nothing chosen; choose with the keyboard and submit.
    page.locator("#composer-text").fill("And a closing line?")
    page.get_by_role("button", name="Send").click()
    rating = page.locator("#rating")
    expect(rating).to_be_visible(timeout=30_000)
    expect(page.locator('#rating input[name="score"]:checked')).to_have_count(0)
    expect(page.get_by_role("button", name="Submit rating")).to_be_disabled()
    step(page, "chat-rating")
    page.locator('#rating input[name="score"][value="8"]').check()
    page.get_by_role("button", name="Submit rating").click()
    expect(rating).to_be_hidden()

    area.focus()
    page.keyboard.press("Control+End")
    page.keyboard.type("\nMy own ending.")
    expect(page.locator("#document-status")).to_have_text("Saved.", timeout=10_000)
    step(page, "chat-with-document")

    page.get_by_role("button", name="I am done chatting").click()
    expect(page.get_by_role("dialog")).to_be_visible()
    step(page, "finish-dialog")
    page.get_by_role("dialog").get_by_role("button", name="Yes, finish the chat").click()
    page.wait_for_url("**/final/")
    expect(page.locator("#transcript")).to_contain_text("and the books stayed dry")
    expect(page.locator("#transcript li.continued .who")).to_have_text("Assistant (continued)")
    document = page.get_by_label("Your final document")
    expect(document).to_have_value(
        "Here is an opening line: the rain kept\n\n" + REST + "\nMy own ending."
    )
    step(page, "final")
    submitted = document.input_value()
    page.locator('input[name="document_quality"][value="8"]').check()
    page.locator('input[name="overall_interaction"][value="9"]').check()
    page.get_by_label("What did the assistant do well?").fill("Good lines.")
    page.get_by_label("What could the assistant do better?").fill("Shorter replies.")
    page.get_by_role("button", name="Submit").click()
    expect(page.locator("#completion-code")).to_have_text(study.completion_code)
    expect(page.get_by_role("button", name="Copy the code")).to_be_visible()
    step(page, "done")
    assert browsing.errors == [] and watch.violations == []

    participant = Participant.objects.get(study=study, external_id="prolific:ws1")
    cut, rest = Message.objects.filter(participant=participant, turn_index=1, role="assistant")
    assert (cut.finish_reason, rest.continuation_of_id) == ("length", cut.pk)
    inserted = DocumentVersion.objects.filter(participant=participant, source="inserted")
    assert [v.from_message_id for v in inserted.order_by("number")] == [cut.pk, rest.pk]
    assert participant.ratings.get().score == 8
    assert participant.final_survey.document_text == submitted
