"""A Prolific participant who uses only the keyboard, from the study link to Prolific's page.

Every control is reached with Tab and operated with Enter, Space or the arrow keys, as a screen
reader or keyboard-only user would; the comprehension check, the blocking rating, the attention
check and the completion redirect are all on the way.
"""

import pytest
from playwright.sync_api import Locator, Page, expect

from studies.models import Participant
from tests.factories import ModelEndpointFactory, three_arm_study

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPLY_TIMEOUT_MS = 120_000
MAX_TABS = 80


def tab_to(page: Page, target: Locator) -> None:
    """Press Tab until `target` has focus; fail if the keyboard cannot reach it."""
    for _ in range(MAX_TABS):
        if target.evaluate("el => el === document.activeElement"):
            return
        page.keyboard.press("Tab")
    pytest.fail(f"{target} cannot be reached with the Tab key")


def choose_radio(page: Page, name: str, index: int) -> None:
    """Tab into a radio group, check its first option with Space, then arrow to option `index`."""
    tab_to(page, page.locator(f'input[name="{name}"]').first)
    page.keyboard.press("Space")
    for _ in range(index):
        page.keyboard.press("ArrowDown")
    expect(page.locator(f'input[name="{name}"]').nth(index)).to_be_checked()


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(300)
def test_a_keyboard_only_prolific_participant_reaches_the_completion_redirect(
    web_server, browsing, embedded_model
):
    endpoint = ModelEndpointFactory(
        base_url=embedded_model.base_url, served_model=embedded_model.model, read_timeout=120
    )
    study = three_arm_study(
        endpoint=endpoint,
        min_turns=1,
        rating_every=1,
        recruiting_source="prolific",
        min_user_message_chars=10,
        comprehension_questions=[
            {"question": "Who writes the final document?", "choices": ["The AI", "You"],
             "answer": 1}
        ],
        attention_checks=[
            {"question": "Select 'Blue' to show you are reading.", "choices": ["Red", "Blue"],
             "answer": 1}
        ],
    )  # fmt: skip
    study.conditions.update(generation_params={"max_tokens": 24})
    page = browsing.page
    prolific = []
    page.route(
        "https://app.prolific.com/**",
        lambda route: (prolific.append(route.request.url), route.fulfill(body="ok"))[-1],
    )

    page.goto(f"/s/{study.slug}/?PROLIFIC_PID=kb1&STUDY_ID=st1&SESSION_ID=se1")
    expect(page.get_by_role("heading", name="Consent")).to_be_visible()
    tab_to(page, page.get_by_role("button", name="I agree"))
    page.keyboard.press("Enter")

    choose_radio(page, "task", 0)
    tab_to(page, page.get_by_role("button", name="Continue"))
    page.keyboard.press("Enter")
    answers = page.locator("#brief-step textarea")
    expect(answers.first).to_be_visible()
    for i in range(answers.count()):
        tab_to(page, answers.nth(i))
        page.keyboard.type(f"Answer {i + 1}: a short, friendly piece.")
    tab_to(page, page.get_by_role("button", name="Start the conversation"))
    page.keyboard.press("Enter")

    # Comprehension check: a wrong answer costs an attempt, the right one opens the chat.
    expect(page.get_by_role("heading", name="A quick check before you start")).to_be_visible()
    choose_radio(page, "q0", 0)
    tab_to(page, page.get_by_role("button", name="Check my answers"))
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("one more attempt")
    choose_radio(page, "q0", 1)
    tab_to(page, page.get_by_role("button", name="Check my answers"))
    page.keyboard.press("Enter")

    expect(page.locator('#chat[data-connected="true"]')).to_be_attached()
    expect(page.locator("#messages")).to_have_attribute("role", "log")
    composer = page.get_by_label("Your message")
    tab_to(page, composer)
    page.keyboard.type("Short")
    page.keyboard.press("Enter")  # below the study's minimum: refused in the page, draft kept
    expect(page.locator("#alerts")).to_contain_text("at least 10 characters")
    expect(composer).to_have_value("Short")
    page.keyboard.type(" please: one title for a post about reading.")
    page.keyboard.press("Enter")
    reply = page.locator('li.message.assistant[data-status="complete"]')
    expect(reply).to_have_count(1, timeout=REPLY_TIMEOUT_MS)

    # The blocking rating puts focus on its heading, with nothing chosen: a stray Enter records
    # nothing. Tab enters the radio group, Space and the arrow keys choose, Submit sends.
    expect(page.locator("#rating")).to_be_visible()
    expect(page.locator("#rating-title")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator('#rating input[name="score"]:checked')).to_have_count(0)
    expect(page.get_by_role("button", name="Submit rating")).to_be_disabled()
    choose_radio(page, "score", 6)
    tab_to(page, page.get_by_role("button", name="Submit rating"))
    page.keyboard.press("Enter")
    expect(page.locator("#rating")).to_be_hidden()
    finish = page.get_by_role("button", name="I am done chatting")
    expect(finish).to_be_visible()
    tab_to(page, finish)
    page.keyboard.press("Enter")
    # It asks first: Escape cancels (focus returns to the button), Enter on "Yes" leaves.
    confirm = page.get_by_role("dialog", name="Finish the chat?")
    expect(confirm).to_be_visible()
    expect(page.get_by_role("button", name="Keep chatting")).to_be_focused()
    page.keyboard.press("Escape")
    expect(confirm).to_be_hidden()
    expect(finish).to_be_focused()
    page.keyboard.press("Enter")
    tab_to(page, confirm.get_by_role("button", name="Yes, finish the chat"))
    page.keyboard.press("Enter")

    tab_to(page, page.get_by_label("Your final document"))
    page.keyboard.type("My final post about reading, written with the assistant.")
    choose_radio(page, "document_quality", 7)
    choose_radio(page, "overall_interaction", 8)
    tab_to(page, page.get_by_label("What did the assistant do well?"))
    page.keyboard.type("Quick answers.")
    tab_to(page, page.get_by_label("What could the assistant do better?"))
    page.keyboard.type("Ask me questions.")
    choose_radio(page, "attention_0", 1)
    tab_to(page, page.get_by_role("button", name="Submit"))
    page.keyboard.press("Enter")

    expect(page.locator("#completion-code")).to_have_text(study.completion_code)
    tab_to(page, page.get_by_role("link", name="Return to the recruiting platform"))
    page.keyboard.press("Enter")
    page.wait_for_url("https://app.prolific.com/**")
    assert prolific == [f"https://app.prolific.com/submissions/complete?cc={study.completion_code}"]
    assert browsing.errors == []

    participant = Participant.objects.get(study=study, external_id="prolific:kb1")
    assert participant.status == Participant.Status.COMPLETED
    assert participant.outcome == Participant.Outcome.COMPLETED
    assert participant.comprehension_failures == 1
    assert participant.recruiting_params == {
        "PROLIFIC_PID": "kb1", "STUDY_ID": "st1", "SESSION_ID": "se1"
    }  # fmt: skip
    assert [a["session_id"] for a in participant.attempts] == ["se1"]
    assert participant.final_survey.document_quality == 8
    assert list(participant.ratings.values_list("score", flat=True)) == [7]
    assert participant.messages.filter(role="user").count() == 1
