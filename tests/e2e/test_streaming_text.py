"""Streamed text on screen is exactly the model's text, emoji and other astral characters too.

Real Chromium on the chat page; the fake model streams a reply word by word. Whole-text frames
(every CHAT_CHECKPOINT_INTERVAL) would hide a wrong delta offset, so they are turned off: the page
builds the text from deltas alone. Every text the streaming bubble ever shows must be the reply
up to some word, never a garbled one (a dropped character, or half an emoji shown as �).
"""

import pytest
from playwright.sync_api import expect

from tests.e2e.pages import enter_chat, scripted_study

pytestmark = [pytest.mark.e2e]

# Emoji, a ZWJ family, a flag, a skin tone, astral letters (math script and Fraktur, written as
# escapes; CJK extension B) and combining accents.
FRAKTUR = "\U0001d518\U0001d52b\U0001d526\U0001d520\U0001d52c\U0001d521\U0001d522"
WORDS = (
    "Here 😀 is a draft 👩\u200d👩\u200d👧 for the café (cafe\u0301) 🇫🇷 team 👍🏽 with "
    f"\U0001d4b3 and 𠜎 plus e\u0301\u0327 then 🧪🧬 and 🎉 again 😀😀 ok {FRAKTUR} ends 🏁 here"
).split(" ")
REPLY = " ".join(WORDS)
STREAMED = {" ".join(WORDS[:k]) for k in range(len(WORDS) + 1)}  # the text after each word

# Records every text the streaming bubble shows, as the page changes it.
WATCH_TEXT = """
window.__shown = [];
document.addEventListener("DOMContentLoaded", () => {
  const list = document.getElementById("messages");
  if (!list) return;
  new MutationObserver(() => {
    const body = list.querySelector('li.message.assistant[data-status="streaming"] .body');
    const text = body ? body.textContent : null;
    if (text && text !== window.__shown[window.__shown.length - 1]) window.__shown.push(text);
  }).observe(list, { childList: true, subtree: true, characterData: true, attributes: true });
});
"""


@pytest.fixture
def no_heals(monkeypatch: pytest.MonkeyPatch) -> None:
    """No whole-text frames in the web server (its environment is copied when it starts)."""
    monkeypatch.setenv("CHAT_CHECKPOINT_INTERVAL", "3600")


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_streamed_astral_characters_show_exactly_mid_stream_and_at_the_end(
    no_heals, web_server, browsing, scripted_model
):
    page = browsing.page
    page.add_init_script(WATCH_TEXT)
    study = scripted_study(scripted_model)
    study.conditions.update(generation_params={"max_tokens": 400, "fake_delay_ms": 60})
    scripted_model.replies.append(REPLY)

    enter_chat(page, study, "emoji1")
    page.locator("#composer-text").fill("Please stream some emoji.")
    page.get_by_role("button", name="Send").click()
    done = page.locator('li.message.assistant[data-status="complete"] .body')
    expect(done).to_have_count(1, timeout=30_000)

    shown = page.evaluate("() => window.__shown")
    garbled = [text for text in shown if text not in STREAMED]
    assert garbled == [], f"the page showed text the model never streamed: {garbled[:3]}"
    # It streamed: many partial texts, several past astral characters, before the end.
    assert len(shown) >= 10, shown
    assert sum("😀😀" in text for text in shown) >= 1 and max(map(len, shown)) > len(REPLY) // 2
    assert done.text_content().strip() == REPLY
    assert browsing.errors == []
