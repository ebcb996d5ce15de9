import pytest
from playwright.sync_api import expect
from studies.models import Study
from tests.e2e.pages import enter_chat, scripted_study, send

SHOTS = "/work/briefs/shots/polish-"
CONSENT = """## What this study is

You will write a short piece with the help of an AI assistant. The conversation
takes about **20 minutes**; you can stop at any time.

- Your chat, your ratings and your final text are stored under a pseudonym.
- Nothing you write is shared with other participants.
- You can ask us to delete your data: [privacy notice](https://example.org/privacy).

<script>alert("not run")</script>
"""

@pytest.mark.django_db(transaction=True)
def test_shots(web_server, browsing, scripted_model):
    page = browsing.page
    study = scripted_study(scripted_model, min_turns=2, rating_every=1, time_limit_minutes=20,
                           consent_text=CONSENT, recruiting_source=Study.Source.PROLIFIC,
                           title="Writing with an AI assistant")
    scripted_model.replies.append("Here is a **first idea**: start with a scene at the harbour.\n\nThen say why it matters to you.")
    page.goto(f"/s/{study.slug}/?PROLIFIC_PID=shot&STUDY_ID=s&SESSION_ID=sess-shot")
    page.screenshot(path=SHOTS + "consent.png", full_page=True)
    page.get_by_role("button", name="I agree").click()
    page.locator('input[name="task"]').first.check()
    page.get_by_role("button", name="Continue").click()
    answers = page.locator("#brief-step textarea")
    expect(answers.first).to_be_visible()
    for i in range(answers.count()):
        answers.nth(i).fill(f"Answer {i + 1}.")
    page.get_by_role("button", name="Start the conversation").click()
    expect(page.locator('#chat[data-connected="true"]')).to_be_attached()
    send(page, "Help me write a blog post about my home town.", replies=1)
    expect(page.locator("#rating")).to_be_visible()
    page.screenshot(path=SHOTS + "chat-rating.png", full_page=True)
    page.locator('#rating input[value="7"]').check()
    page.screenshot(path=SHOTS + "chat-rating-chosen.png", full_page=True)
    page2 = page.context.new_page()
    page2.goto(f"/s/{study.slug}/?PROLIFIC_PID=shot2&STUDY_ID=s&SESSION_ID=sess-shot2")
    page2.get_by_role("button", name="I do not agree").click()
    page2.get_by_role("button", name="Copy the code").click()
    page2.wait_for_timeout(300)
    page2.screenshot(path=SHOTS + "done.png", full_page=True)
