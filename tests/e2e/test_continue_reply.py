"""A reply cut at the token limit says so, and the participant can ask it to continue."""

import pytest
from playwright.sync_api import expect

from studies.services import turns
from tests.e2e.pages import enter_chat, scripted_study, send

pytestmark = [pytest.mark.e2e]

CUT = "!length Once upon a time there was a"
REST = "small dragon who loved old books."
NOTICE = "This reply was cut off at the length limit."


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_a_cut_reply_continues_from_the_keyboard_and_a_reload_keeps_it(
    web_server, browsing, scripted_model
):
    page = browsing.page
    study = scripted_study(scripted_model, min_turns=2, rating_every=0)
    scripted_model.replies += [CUT, REST]
    enter_chat(page, study, "continue1")

    send(page, "Write me a very short story please.", replies=1)
    notice = page.locator("li.message.assistant .cut-notice")
    expect(notice).to_contain_text(NOTICE)
    button = notice.get_by_role("button", name="Continue", exact=True)
    expect(button).to_be_enabled()
    button.focus()
    page.keyboard.press("Enter")

    continued = page.locator("li.message.assistant.continued")
    expect(continued).to_have_attribute("data-status", "complete", timeout=30_000)
    expect(continued.locator(".body")).to_contain_text("small dragon")
    expect(continued.locator(".who")).to_have_text("Assistant (continued)")
    expect(notice).to_have_count(0)  # the reply is whole now
    expect(page.locator("#progress")).to_contain_text("Turns completed: 1 ")
    expect(page.locator("#finish")).to_be_hidden()  # a continuation is not a second turn
    asked = scripted_model.server.stats.last_body["messages"]
    assert asked[-1] == {"role": "user", "content": turns.CONTINUE_INSTRUCTION}
    assert asked[-2]["content"] == CUT.removeprefix("!length ")

    page.reload()
    expect(page.locator('#chat[data-connected="true"]')).to_be_attached()
    replies = page.locator("li.message.assistant")
    expect(replies).to_have_count(2)
    expect(replies.nth(0).locator(".body")).to_contain_text("Once upon a time there was a")
    expect(replies.nth(1)).to_have_class("message assistant continued")
    expect(replies.nth(1).locator(".body")).to_contain_text("small dragon")
    expect(page.locator(".cut-notice")).to_have_count(0)
    assert browsing.errors == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_an_arm_without_continuing_shows_the_notice_but_no_button(
    web_server, browsing, scripted_model
):
    page = browsing.page
    study = scripted_study(scripted_model, min_turns=2, rating_every=0)
    study.conditions.update(allow_continue=False)
    scripted_model.replies += [CUT]
    enter_chat(page, study, "continue2")
    send(page, "Write me a very short story please.", replies=1)
    expect(page.locator(".cut-notice")).to_contain_text(NOTICE)
    expect(page.get_by_role("button", name="Continue", exact=True)).to_have_count(0)
    page.reload()
    expect(page.locator(".cut-notice")).to_contain_text(NOTICE)
    expect(page.get_by_role("button", name="Continue", exact=True)).to_have_count(0)
    assert browsing.errors == []


# The connection drops with the Continue request in it (the server never gets it): the socket
# closes instead of sending the frame, once.
LOSE_NEXT_CONTINUE = """() => {
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    if (String(data).includes('"continue"')) {
      WebSocket.prototype.send = send;
      this.close();
      return;
    }
    return send.call(this, data);
  };
}"""


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_a_continue_lost_with_the_connection_can_be_asked_again(
    web_server, browsing, scripted_model
):
    page = browsing.page
    study = scripted_study(scripted_model, min_turns=2, rating_every=0)
    scripted_model.replies += [CUT, REST]
    enter_chat(page, study, "continue3")
    send(page, "Write me a very short story please.", replies=1)
    button = page.locator(".cut-notice").get_by_role("button", name="Continue", exact=True)
    expect(button).to_be_enabled()
    page.evaluate(LOSE_NEXT_CONTINUE)
    button.click()
    expect(page.locator('#chat[data-connected="false"]')).to_be_attached()
    expect(page.locator('#chat[data-connected="true"]')).to_be_attached(timeout=15_000)
    # The reconnected page shows the state as the server has it: nothing was continued.
    expect(button).to_be_enabled(timeout=10_000)
    button.click()
    continued = page.locator("li.message.assistant.continued")
    expect(continued).to_have_attribute("data-status", "complete", timeout=30_000)
    expect(continued.locator(".body")).to_contain_text("small dragon")
    assert browsing.errors == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_a_failed_continuation_left_behind_offers_no_retry_after_a_new_turn(
    web_server, browsing, scripted_model
):
    page = browsing.page
    study = scripted_study(scripted_model, min_turns=3, rating_every=0)
    scripted_model.replies += [CUT, "!500", "Here is something else."]
    enter_chat(page, study, "continue4")
    send(page, "Write me a very short story please.", replies=1)
    page.locator(".cut-notice").get_by_role("button", name="Continue", exact=True).click()
    failed = page.locator('li.message.assistant[data-status="failed"]')
    expect(failed.get_by_role("button", name="Retry this reply")).to_be_visible(timeout=30_000)
    send(page, "Never mind, tell me about owls instead.", replies=2)
    # The server only retries the last reply: the old one no longer offers it, reloaded or not.
    expect(failed.get_by_role("button", name="Retry this reply")).to_have_count(0)
    page.reload()
    expect(page.locator('#chat[data-connected="true"]')).to_be_attached()
    expect(failed).to_have_count(1)
    expect(failed.get_by_role("button", name="Retry this reply")).to_have_count(0)
    expect(page.locator(".cut-notice")).to_contain_text(NOTICE)  # still cut, not continued
    assert browsing.errors == []
