"""After a reply the page asks for nothing more: the complete frame carries the rendered reply and
the counters, so the whole chat is not sent (and rendered) again after every turn."""

import json

import pytest
from playwright.sync_api import WebSocket, expect

from tests.e2e.pages import enter_chat, scripted_study, send

pytestmark = [pytest.mark.e2e]


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_a_finished_reply_shows_without_the_page_resyncing(web_server, browsing, scripted_model):
    page = browsing.page
    sent: list[dict] = []

    def watch(socket: WebSocket) -> None:
        socket.on("framesent", lambda payload: sent.append(json.loads(payload)))

    page.on("websocket", watch)
    study = scripted_study(scripted_model, min_turns=2, rating_every=0)
    scripted_model.replies += ["A **first** reply.", "A *second* reply."]
    enter_chat(page, study, "nosync1")

    send(page, "Help me with a first draft please.", replies=1)
    body = page.locator('li.message.assistant[data-status="complete"] .body')
    expect(body.locator("strong")).to_have_text("first")  # the HTML from the complete frame
    expect(page.locator("#finish")).to_be_hidden()  # one turn of at least two
    expect(page.locator("#composer-text")).to_be_enabled()
    send(page, "And now a second one, thanks.", replies=2)
    expect(body.nth(1).locator("em")).to_have_text("second")
    expect(page.locator("#finish")).to_be_visible()  # the counters came with the frame
    expect(page.locator("#progress")).to_contain_text("2")
    page.wait_for_timeout(500)
    assert [f["type"] for f in sent if f["type"] not in ("presence",)] == ["send", "send"]
    assert browsing.errors == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_the_time_left_does_not_grow_back_after_a_reply(web_server, browsing, scripted_model):
    """The countdown comes from the last state frame; a reply, which brings no new state, must
    not restart it from that frame's seconds_left (the time since then would be given back)."""
    page = browsing.page
    page.clock.install()
    study = scripted_study(
        scripted_model, min_turns=3, time_limit_minutes=10, time_warning_minutes=10
    )
    scripted_model.replies += ["A first reply."]
    enter_chat(page, study, "clock1")
    clock = page.locator("#clock")
    expect(clock).to_contain_text("About 10 minute(s) left")
    page.clock.fast_forward("05:00")
    expect(clock).to_contain_text("About 5 minute(s) left")

    send(page, "Help me with a first draft please.", replies=1)
    page.clock.run_for(3000)  # a few ticks of the countdown after the reply
    expect(clock).to_contain_text("About 5 minute(s) left")
    assert browsing.errors == []
