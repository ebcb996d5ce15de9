"""The chat page's finish: the rating radio group, the writing indicator, auto-scroll with a jump
button, the countdown, the length hint, and the copy button on the code page."""

import re

import pytest
from playwright.sync_api import Page, expect

from studies.models import Participant, Study, TurnRating
from tests.e2e.pages import enter_chat, scripted_study, send
from tests.e2e.test_keyboard_prolific import choose_radio, tab_to

pytestmark = [pytest.mark.e2e]

LONG_REPLY = "\n".join(f"Line {i} of a long reply that keeps on streaming." for i in range(120))


def at_latest(page: Page) -> bool:
    return page.locator("#messages").evaluate(
        "el => el.scrollHeight - el.scrollTop - el.clientHeight < 24"
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_the_rating_opens_with_nothing_chosen_and_a_stray_enter_records_nothing(
    web_server, browsing, scripted_model
):
    page = browsing.page
    study = scripted_study(scripted_model, min_turns=2, rating_every=1)
    enter_chat(page, study, "rate1")
    send(page, "Help me write.", replies=1)

    expect(page.locator("#rating")).to_be_visible()
    expect(page.locator("#rating-title")).to_be_focused()
    expect(page.locator('#rating input[name="score"]:checked')).to_have_count(0)
    page.keyboard.press("Enter")
    submit = page.get_by_role("button", name="Submit rating")
    expect(submit).to_be_disabled()
    page.wait_for_timeout(500)  # a frame sent by the Enter would be stored by now
    assert not TurnRating.objects.filter(participant__study=study).exists()
    expect(page.locator("#rating")).to_be_visible()

    choose_radio(page, "score", 1)  # Space checks 1, one ArrowDown moves to 2
    page.keyboard.press("ArrowRight")
    expect(page.locator('#rating input[value="3"]')).to_be_checked()
    expect(submit).to_be_enabled()
    tab_to(page, submit)
    page.keyboard.press("Enter")
    expect(page.locator("#rating")).to_be_hidden()
    expect(page.locator("#composer-text")).to_be_focused()
    rating = TurnRating.objects.get(participant__study=study)
    assert (rating.after_turn, rating.score) == (1, 3)
    assert browsing.errors == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_a_double_click_on_submit_rating_records_once_and_shows_no_error(
    web_server, browsing, scripted_model
):
    page = browsing.page
    study = scripted_study(scripted_model, min_turns=2, rating_every=1)
    enter_chat(page, study, "rate2")
    send(page, "Help me write.", replies=1)
    page.get_by_role("radio", name="7", exact=True).check()
    page.get_by_role("button", name="Submit rating").dblclick()
    expect(page.locator("#rating")).to_be_hidden()
    expect(page.locator("#composer")).to_be_visible()
    page.wait_for_timeout(500)  # an answer to a second frame would have arrived by now
    expect(page.locator("#alerts")).to_be_empty()
    assert list(TurnRating.objects.values_list("score", flat=True)) == [7]


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_the_writing_indicator_shows_from_send_until_the_first_token(
    web_server, browsing, scripted_model
):
    page = browsing.page
    study = scripted_study(scripted_model)
    study.conditions.update(
        generation_params={"fake_delay_ms": 15, "fake_first_token_delay_ms": 1500}
    )
    scripted_model.replies.append("Here is a first idea for your post.")
    enter_chat(page, study, "writing1")
    writing = page.locator("#writing")
    expect(writing).to_be_hidden()

    page.locator("#composer-text").fill("Help me start.")
    page.get_by_role("button", name="Send").click()
    expect(writing).to_be_visible()
    expect(writing).to_have_text("The assistant is writing…")
    reply = page.locator("li.message.assistant .body")
    expect(reply).to_be_empty()  # no token yet: only the indicator says something is happening
    expect(reply).not_to_be_empty(timeout=10_000)
    expect(writing).to_be_hidden()
    expect(page.locator('li.message.assistant[data-status="complete"]')).to_have_count(1)
    said = page.locator("#announcer p", has_text="The assistant is writing")
    expect(said).to_have_count(1)
    assert browsing.errors == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_scrolling_up_stops_the_auto_scroll_and_the_jump_button_returns(
    web_server, browsing, scripted_model
):
    page = browsing.page
    study = scripted_study(scripted_model)
    study.conditions.update(generation_params={"fake_delay_ms": 25})
    scripted_model.replies.append(LONG_REPLY)
    enter_chat(page, study, "scroll1")
    messages = page.locator("#messages")
    jump = page.get_by_role("button", name="Jump to the latest")

    page.locator("#composer-text").fill("Write me a long list.")
    page.get_by_role("button", name="Send").click()
    page.wait_for_function(
        "() => { const l = document.getElementById('messages');"
        " return l.scrollHeight > l.clientHeight + 400; }"
    )
    assert at_latest(page)  # following the reply as it grows
    expect(jump).to_be_hidden()

    messages.hover()
    page.mouse.wheel(0, -5000)
    page.wait_for_function("() => document.getElementById('messages').scrollTop === 0")
    expect(jump).to_be_visible()
    page.wait_for_timeout(800)  # more of the reply arrives meanwhile
    assert messages.evaluate("el => el.scrollTop") == 0
    assert page.locator('li.message.assistant[data-status="streaming"]').count() == 1

    jump.click()
    expect(jump).to_be_hidden()
    assert at_latest(page)
    page.wait_for_timeout(500)
    assert at_latest(page)  # following again
    expect(page.locator('li.message.assistant[data-status="complete"]')).to_have_count(
        1, timeout=30_000
    )
    assert at_latest(page)
    assert browsing.errors == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_a_time_limited_study_shows_a_countdown_in_a_timer(web_server, browsing, scripted_model):
    page = browsing.page
    study = scripted_study(scripted_model, time_limit_minutes=10)
    enter_chat(page, study, "clock1")
    countdown = page.get_by_role("timer")
    expect(countdown).to_be_visible()
    expect(countdown).to_have_text(re.compile(r"Time left: (10:00|09:[0-5]\d)"))
    expect(countdown).to_have_attribute("aria-live", "off")
    first = countdown.text_content()
    expect(countdown).not_to_have_text(first or "", timeout=3000)  # it ticks


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_a_study_without_a_time_limit_shows_no_countdown(web_server, browsing, scripted_model):
    page = browsing.page
    enter_chat(page, scripted_study(scripted_model), "clock2")
    page.wait_for_timeout(1200)
    expect(page.locator("#countdown")).to_be_hidden()


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_the_length_hint_appears_only_once_something_is_typed(web_server, browsing, scripted_model):
    page = browsing.page
    enter_chat(page, scripted_study(scripted_model, min_user_message_chars=10), "len1")
    counter = page.locator("#char-count")
    expect(page.locator("#progress")).to_contain_text("Turns completed")  # the state is in
    expect(counter).to_be_empty()
    page.locator("#composer-text").press_sequentially("abc")
    expect(counter).to_have_text("3 characters; at least 10 needed.")
    page.locator("#composer-text").fill("")
    page.locator("#composer-text").dispatch_event("input")
    expect(counter).to_be_empty()


def decline_to_code_page(page: Page, study: Study) -> None:
    page.goto(f"/s/{study.slug}/?PROLIFIC_PID=copy1&STUDY_ID=s&SESSION_ID=sess-copy1")
    page.get_by_role("button", name="I do not agree").click()
    expect(page.locator("#completion-code")).to_have_text(study.declined_code)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_the_copy_button_copies_the_code_and_says_so(web_server, browsing, scripted_model):
    page = browsing.page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    study = scripted_study(scripted_model, recruiting_source=Study.Source.PROLIFIC)
    decline_to_code_page(page, study)
    button = page.get_by_role("button", name="Copy the code")
    tab_to(page, button)
    page.keyboard.press("Enter")
    expect(page.locator("#copy-status")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == study.declined_code
    participant = Participant.objects.get(study=study)
    assert participant.status == Participant.Status.DECLINED
    assert browsing.errors == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_without_the_clipboard_api_the_copy_button_falls_back(web_server, browsing, scripted_model):
    page = browsing.page
    page.add_init_script("Object.defineProperty(navigator, 'clipboard', {value: undefined})")
    study = scripted_study(scripted_model, recruiting_source=Study.Source.PROLIFIC)
    decline_to_code_page(page, study)
    page.get_by_role("button", name="Copy the code").click()
    expect(page.locator("#copy-status")).to_have_text(re.compile("Copied|copy it with your"))
    assert page.evaluate("String(window.getSelection())").strip() == study.declined_code
    assert browsing.errors == []
