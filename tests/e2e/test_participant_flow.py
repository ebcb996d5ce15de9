"""A participant's whole visit in a real browser, on the web app and the real embedded model."""

import json
from collections import Counter
from dataclasses import dataclass, field

import pytest
from playwright.sync_api import Page, WebSocket, expect

from studies.models import Participant
from tests.e2e.pages import finish_chat
from tests.factories import ModelEndpointFactory, three_arm_study

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPLY_TIMEOUT_MS = 120_000
COMPLETE_REPLY = 'li.message.assistant[data-status="complete"]'

# Remembers which assistant bubbles showed text while still streaming (before completion).
WATCH_STREAMING = """
window.__streamedIds = [];
document.addEventListener("DOMContentLoaded", () => {
  const list = document.getElementById("messages");
  if (!list) return;
  const seen = new Set();
  new MutationObserver(() => {
    list.querySelectorAll('li.message.assistant[data-status="streaming"]').forEach((li) => {
      const body = li.querySelector(".body");
      if (body && body.textContent.length > 0) seen.add(Number(li.dataset.id));
    });
    window.__streamedIds = [...seen];
  }).observe(list, { childList: true, subtree: true, characterData: true, attributes: true });
});
"""


@dataclass
class SocketLog:
    """The websockets a page opened and every JSON frame they received, in order."""

    opened: int = 0
    frames: list[dict] = field(default_factory=list)

    def watch(self, page: Page) -> "SocketLog":
        page.on("websocket", self._on_socket)
        return self

    def _on_socket(self, socket: WebSocket) -> None:
        self.opened += 1
        socket.on("framereceived", self._on_frame)

    def _on_frame(self, payload: str | bytes) -> None:
        if isinstance(payload, str):
            self.frames.append(json.loads(payload))


def _chat_turn(page: Page, text: str, *, turn: int) -> None:
    page.locator("#composer-text").fill(text)
    page.get_by_role("button", name="Send").click()
    expect(page.locator(COMPLETE_REPLY)).to_have_count(turn, timeout=REPLY_TIMEOUT_MS)
    expect(page.locator(COMPLETE_REPLY).nth(turn - 1).locator(".body")).not_to_be_empty()


def _rate(page: Page, score: int) -> None:
    """Answer the blocking rating that replaced the composer."""
    expect(page.locator("#rating")).to_be_visible()
    expect(page.locator("#composer")).to_be_hidden()
    page.get_by_role("radio", name=str(score), exact=True).check()
    page.get_by_role("button", name="Submit rating").click()
    expect(page.locator("#rating")).to_be_hidden()


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(300)
def test_a_participant_goes_from_the_recruiting_link_to_the_completion_code(
    web_server, browsing, embedded_model
):
    endpoint = ModelEndpointFactory(
        base_url=embedded_model.base_url, served_model=embedded_model.model, read_timeout=120
    )
    study = three_arm_study(endpoint=endpoint, min_turns=2, rating_every=1)
    study.conditions.update(generation_params={"max_tokens": 40, "temperature": 0.7})
    page = browsing.page
    page.add_init_script(WATCH_STREAMING)
    sockets = SocketLog().watch(page)

    page.goto(f"/s/{study.slug}/?PROLIFIC_PID=e2e1&STUDY_ID=s&SESSION_ID=x")
    expect(page.get_by_role("heading", name="Consent")).to_be_visible()
    page.get_by_role("button", name="I agree").click()

    page.locator('input[name="task"]').first.check()
    page.get_by_role("button", name="Continue").click()
    answers = page.locator("#brief-step textarea")
    expect(answers.first).to_be_visible()
    for i in range(answers.count()):
        answers.nth(i).fill(f"Answer number {i + 1} about what I want to write.")
    page.get_by_role("button", name="Start the conversation").click()

    expect(page.locator('#chat[data-connected="true"]')).to_be_attached()
    expect(page.locator("#composer")).to_be_visible()
    expect(page.locator("#finish")).to_be_hidden()
    _chat_turn(page, "Help me plan a short blog post. Give me one title idea.", turn=1)
    expect(page.locator("#rating")).to_be_visible()
    page.screenshot(path="/tmp/e2e-chat.png", full_page=True)
    # The participant reads the reply for a while: longer than the channel layer's 5 s blocking
    # poll of Redis, so a socket that cannot sit idle would drop here.
    page.wait_for_timeout(6_000)
    expect(page.locator('#chat[data-connected="true"]')).to_be_attached()
    _rate(page, 7)
    expect(page.locator("#composer")).to_be_visible()
    expect(page.locator("#finish")).to_be_hidden()

    _chat_turn(page, "Thanks. Now suggest an opening sentence.", turn=2)
    _rate(page, 8)
    expect(page.locator("#announcer")).not_to_be_empty()
    streamed_in_page = set(page.evaluate("window.__streamedIds"))
    finish_chat(page)

    page.get_by_label("Your final document").fill("My final blog post, written with the assistant.")
    page.locator('input[name="document_quality"][value="8"]').check()
    page.locator('input[name="overall_interaction"][value="9"]').check()
    page.get_by_label("What did the assistant do well?").fill("It answered quickly.")
    page.get_by_label("What could the assistant do better?").fill("Ask me more questions.")
    page.get_by_role("button", name="Submit").click()

    expect(page.locator("#completion-code")).to_have_text(study.completion_code)
    page.screenshot(path="/tmp/e2e-done.png", full_page=True)
    assert browsing.errors == []

    participant = Participant.objects.get(study=study, external_id="prolific:e2e1")
    assert participant.status == Participant.Status.COMPLETED
    replies = list(participant.messages.filter(role="assistant").order_by("turn_index"))
    assert [(m.turn_index, m.status) for m in replies] == [(1, "complete"), (2, "complete")]
    assert all(m.content.strip() for m in replies)
    assert list(participant.ratings.values_list("after_turn", "score")) == [(1, 7), (2, 8)]
    assert participant.final_survey.document_quality == 8
    assert participant.final_survey.overall_interaction == 9
    kinds = Counter(participant.events.values_list("kind", flat=True))
    assert kinds["study.turn.completed"] == 2
    assert kinds["study.participant.completed"] == 1

    reply_ids = {m.pk for m in replies}
    assert sockets.opened == 1, "the chat socket dropped and reconnected"
    streamed_frames = {f["id"] for f in sockets.frames if f.get("type") == "delta"}
    assert reply_ids <= streamed_frames, "a reply reached the page without delta frames"
    assert reply_ids <= streamed_in_page, "a reply showed no text before it completed"
