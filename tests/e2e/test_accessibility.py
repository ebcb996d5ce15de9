"""Every participant page, in each of the states a participant meets, has no serious or critical
accessibility violation that axe-core finds (WCAG 2 A/AA and best practices), in Chromium."""

from urllib.parse import urlsplit

import pytest
from django.contrib.auth.models import AnonymousUser
from django.test import RequestFactory
from playwright.sync_api import Page, Route, expect

from studies.models import Study
from studies.services import access, reentry
from studies.services.redis import redis_client
from tests.e2e.a11y import assert_accessible
from tests.e2e.pages import CspWatch, scripted_study
from webapp.busy import busy_response

pytestmark = [pytest.mark.e2e]

REPLY_TIMEOUT_MS = 30_000
CHECK_QUESTION = {"question": "Who writes the final document?", "choices": ["The AI", "You"]}


BROKEN_PAGE = """<!doctype html><html lang="en"><title>Broken</title><main><h1>Broken</h1>
<p class="faint">Hard to read</p><img src="data:,"><button></button>
<p id="label">Your code</p><p aria-labelledby="label">ABC-123</p></main>"""
FAINT_TEXT = ".faint { color: #bbb; background: #fff; }"


def open_study(page: Page, study: Study, pid: str) -> None:
    page.goto(f"/s/{study.slug}/?PROLIFIC_PID={pid}&STUDY_ID=s&SESSION_ID=sess-{pid}")


def send_and_wait(page: Page, text: str, status: str, count: int) -> None:
    page.locator("#composer-text").fill(text)
    page.get_by_role("button", name="Send").click()
    replies = page.locator(f'li.message.assistant[data-status="{status}"]')
    expect(replies).to_have_count(count, timeout=REPLY_TIMEOUT_MS)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_every_step_of_a_visit_has_no_serious_accessibility_violation(
    web_server, browsing, scripted_model
):
    page = browsing.page
    watch = CspWatch().attach(page.context)  # axe, injected over DevTools, breaks no policy
    study = scripted_study(
        scripted_model,
        min_turns=1,
        rating_every=1,
        time_limit_minutes=30,
        time_warning_minutes=30,  # the clock's warning shows from the start
        comprehension_questions=[CHECK_QUESTION | {"answer": 1}],
    )
    scripted_model.replies += [
        "A **bold** reply with a [link](https://example.org/) and a list:\n\n- one\n- two",
        "!500",
        "The retried reply.",
    ]
    open_study(page, study, "a11y1")
    expect(page.get_by_role("heading", name="Consent")).to_be_visible()
    assert_accessible(page, "the consent page")
    page.get_by_role("button", name="I agree").click()

    expect(page.locator('input[name="task"]').first).to_be_visible()
    assert_accessible(page, "the topic choice")
    page.locator('input[name="task"]').first.check()
    page.get_by_role("button", name="Continue").click()
    answers = page.locator("#brief-step textarea")
    expect(answers.first).to_be_visible()
    assert_accessible(page, "the intent questions")
    for i in range(answers.count()):
        answers.nth(i).fill(f"Answer {i + 1}.")
    page.get_by_role("button", name="Start the conversation").click()

    expect(page.get_by_role("heading", name="A quick check before you start")).to_be_visible()
    assert_accessible(page, "the comprehension check")
    page.locator('input[name="q0"]').first.check()
    page.get_by_role("button", name="Check my answers").click()
    expect(page.get_by_role("alert")).to_contain_text("one more attempt")
    assert_accessible(page, "the comprehension check with its error")
    page.locator('input[name="q0"]').nth(1).check()
    page.get_by_role("button", name="Check my answers").click()

    expect(page.locator('#chat[data-connected="true"]')).to_be_attached()
    expect(page.locator("#composer")).to_be_visible()
    expect(page.locator("#clock")).to_be_visible()
    assert_accessible(page, "the chat, connected")
    send_and_wait(page, "Help me write a post.", "complete", 1)
    expect(page.locator("#rating")).to_be_visible()
    assert_accessible(page, "the chat with a reply and the rating open")
    page.locator('#rating button[data-score="7"]').click()
    expect(page.locator("#composer")).to_be_visible()
    assert_accessible(page, "the chat with a reply")

    send_and_wait(page, "And a second part, please.", "failed", 1)
    expect(page.get_by_role("button", name="Retry this reply")).to_be_visible()
    assert_accessible(page, "the chat with a failed reply and its retry button")
    page.get_by_role("button", name="Retry this reply").click()
    complete = page.locator('li.message.assistant[data-status="complete"]')
    expect(complete).to_have_count(2, timeout=REPLY_TIMEOUT_MS)
    page.locator('#rating button[data-score="8"]').click()
    page.locator("#finish").get_by_role("button").click()
    expect(page.get_by_role("dialog", name="Finish the chat?")).to_be_visible()
    assert_accessible(page, "the confirmation before leaving the chat")
    page.get_by_role("dialog").get_by_role("button", name="Yes, finish the chat").click()

    expect(page.get_by_label("Your final document")).to_be_visible()
    assert_accessible(page, "the final page")
    page.get_by_label("Your final document").fill("The final text.")
    page.locator('input[name="document_quality"][value="8"]').check()
    page.locator('input[name="overall_interaction"][value="9"]').check()
    page.get_by_label("What did the assistant do well?").fill("Fine.")
    page.get_by_label("What could the assistant do better?").fill("Nothing.")
    page.get_by_role("button", name="Submit").click()
    expect(page.locator("#completion-code")).to_have_text(study.completion_code)
    assert_accessible(page, "the done page")
    assert watch.violations == [] and browsing.errors == []


def forget_entry_attempts() -> None:
    """Clear the server's re-entry counters: their window (15 minutes) outlives a test run, and
    the server process keeps the real key prefix, so reruns would reach the limit."""
    client = redis_client(5.0)
    for key in client.scan_iter(f"{reentry.KEY_PREFIX}:*"):
        client.delete(key)


def busy_page(route: Route, csrf_cookie: str = "") -> None:
    """Answer the request as the server does when it got no database connection in time."""
    factory = RequestFactory()
    path = urlsplit(route.request.url).path
    if route.request.method == "POST":
        request = factory.post(
            path, data=route.request.post_data, content_type="application/x-www-form-urlencoded"
        )
        request.META["CSRF_COOKIE"] = csrf_cookie
    else:
        request = factory.get(path)
    request.user = AnonymousUser()
    response = busy_response(request)
    headers = {k: v for k, v in response.items() if k.lower() != "content-length"}
    route.fulfill(status=response.status_code, headers=headers, body=response.content)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_the_pages_around_the_steps_have_no_serious_accessibility_violation(
    web_server, browsing, scripted_model
):
    page = browsing.page
    study = scripted_study(scripted_model)
    page.goto(f"/s/{study.slug}/?assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE&hitId=h")
    expect(page.get_by_text("Accept the HIT to start.")).to_be_visible()
    assert_accessible(page, "the MTurk preview page")

    page.goto(f"/s/{study.slug}/closed/")
    expect(page.get_by_role("status")).to_contain_text("has ended")
    assert_accessible(page, "the closed page")

    # The busy page: a GET that reloads itself, then a POST offered again (kept while checked).
    consent = f"**/s/{study.slug}/consent/"
    open_study(page, study, "a11y2")
    page.route(consent, busy_page)
    page.reload()
    expect(page.get_by_role("heading", name="Many people are arriving at once")).to_be_visible()
    assert_accessible(page, "the busy page of a GET")
    page.unroute(consent)
    page.reload()
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    page.route(consent, lambda route: busy_page(route, csrf))
    page.get_by_role("button", name="I agree").click()
    expect(page.get_by_role("button", name="Send again")).to_be_visible()
    assert_accessible(page, "the busy page of a POST")
    page.unroute(consent)

    # The same id in another browser, without its platform token: the resume-code page.
    forget_entry_attempts()
    other = page.context.browser.new_context(base_url=web_server)
    try:
        elsewhere = other.new_page()
        elsewhere.goto(f"/s/{study.slug}/?PROLIFIC_PID=a11y2&STUDY_ID=s")
        expect(elsewhere.get_by_role("heading", name="Resume your session")).to_be_visible()
        assert_accessible(elsewhere, "the resume page")
        elsewhere.get_by_label("Resume code").fill("WRONG-CODE")
        elsewhere.get_by_role("button", name="Continue").click()
        expect(elsewhere.get_by_role("alert")).to_contain_text("not right")
        assert_accessible(elsewhere, "the resume page with its error")
        # A researcher's preview: the same steps under a banner.
        elsewhere.goto(access.access_link(study, "preview"))
        expect(elsewhere.get_by_role("note")).to_contain_text("Preview")
        assert_accessible(elsewhere, "the consent page of a preview")
    finally:
        other.close()
    assert browsing.errors == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
def test_the_check_lists_each_serious_violation_with_its_rule_targets_and_help(browsing):
    page = browsing.page
    page.set_content(BROKEN_PAGE)
    page.add_style_tag(content=FAINT_TEXT)
    with pytest.raises(AssertionError) as failure:
        assert_accessible(page, "a broken page")
    report = str(failure.value)
    assert "accessibility violations on a broken page" in report
    lines = report.splitlines()
    for rule, target in [
        ("color-contrast", ".faint"),
        ("image-alt", "img"),
        ("button-name", "button"),
    ]:
        at = next(i for i, line in enumerate(lines) if f": {rule}: " in line)
        assert lines[at].startswith(("- serious:", "- critical:")), lines[at]
        assert f"<https://dequeuniversity.com/rules/axe/4.14/{rule}?" in lines[at]
        assert lines[at + 1] == f"    on: {target}"
    assert "insufficient color contrast of 1.91" in report
    # A name on a paragraph, which screen readers ignore: axe leaves it for review, which fails.
    assert "- serious (needs review): aria-prohibited-attr: " in report
    # Only serious and critical violations fail; the minor ones are still returned.
    found = assert_accessible(page, "a broken page", impacts=("minor",))
    assert {"color-contrast", "image-alt", "button-name"} <= {v["id"] for v in found}
