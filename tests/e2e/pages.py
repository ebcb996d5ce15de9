"""Helpers for browser tests of the pages under the Content-Security-Policy: a participant walked
into the chat, a staff session, and a watch on the policy violations a page raises."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from playwright.sync_api import BrowserContext, Page, expect

from studies.models import Study
from tests.factories import ModelEndpointFactory, three_arm_study
from tests.fakes.openai_server import FakeOpenAIServer

# Reports every violation the page sees to Python (bindings are not subject to the page's CSP).
WATCH_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (e) => {
  const where = `${e.sourceFile}:${e.lineNumber}`;
  window.__cspViolation(`${e.effectiveDirective} blocked ${e.blockedURI} at ${where}`);
});
"""


@dataclass
class CspWatch:
    """The CSP violations the pages of one browser context raised, as short lines."""

    violations: list[str] = field(default_factory=list)

    def attach(self, context: BrowserContext) -> "CspWatch":
        context.expose_function("__cspViolation", lambda line: self.violations.append(line))
        context.add_init_script(WATCH_VIOLATIONS)
        return self


@dataclass
class ScriptedModel:
    """The fake model server in a thread, answering every chat call with `reply(body)`."""

    base_url: str
    server: FakeOpenAIServer
    replies: list[str] = field(default_factory=list)

    def reply(self, body: dict[str, Any]) -> str:
        return self.replies.pop(0) if self.replies else "Plain reply."


@pytest.fixture
def scripted_model() -> Iterator[ScriptedModel]:
    """A fake-script model: tests append the replies it streams (word by word) to `replies`."""
    server = FakeOpenAIServer(first_token_delay=0.1)
    model = ScriptedModel("", server)
    server.responder = model.reply
    model.base_url, stop = server.run_in_thread()
    yield model
    stop()


def scripted_study(model: ScriptedModel, **fields: Any) -> Study:
    """A live three-arm study on the scripted model; replies stream a word every 15 ms."""
    endpoint = ModelEndpointFactory(base_url=model.base_url, served_model="fake-script")
    study = three_arm_study(endpoint=endpoint, **{"min_turns": 1, "rating_every": 0} | fields)
    study.conditions.update(generation_params={"max_tokens": 400, "fake_delay_ms": 15})
    return study


def enter_chat(page: Page, study: Study, pid: str) -> None:
    """Walk a new Prolific participant from the study link into the chat."""
    page.goto(f"/s/{study.slug}/?PROLIFIC_PID={pid}&STUDY_ID=s&SESSION_ID=sess-{pid}")
    page.get_by_role("button", name="I agree").click()
    page.locator('input[name="task"]').first.check()
    page.get_by_role("button", name="Continue").click()
    answers = page.locator("#brief-step textarea")
    expect(answers.first).to_be_visible()
    for i in range(answers.count()):
        answers.nth(i).fill(f"Answer {i + 1}.")
    page.get_by_role("button", name="Start the conversation").click()
    expect(page.locator('#chat[data-connected="true"]')).to_be_attached()


def send(page: Page, text: str, *, replies: int) -> None:
    """Send a message and wait until `replies` assistant replies are complete."""
    page.locator("#composer-text").fill(text)
    page.get_by_role("button", name="Send").click()
    done = page.locator('li.message.assistant[data-status="complete"]')
    expect(done).to_have_count(replies, timeout=30_000)


def finish_chat(page: Page) -> None:
    """Leave the chat: the finish button, then "Yes" in the confirmation dialog."""
    page.locator("#finish").get_by_role("button", name="I am done chatting").click()
    page.get_by_role("dialog").get_by_role("button", name="Yes, finish the chat").click()
    page.wait_for_url("**/final/")


def log_in_staff(context: BrowserContext, base_url: str) -> User:
    """A superuser whose session cookie the browser context carries."""
    user = User.objects.create_superuser("staff", "staff@example.org", "pw-staff-1")
    client = Client()
    client.force_login(user)
    cookie = client.cookies["sessionid"]
    context.add_cookies([{"name": "sessionid", "value": cookie.value, "url": base_url}])
    return user
