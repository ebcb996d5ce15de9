"""Hostile content in model replies, participant messages and survey answers runs nowhere.

Real Chromium drives the participant pages and the admin with the Content-Security-Policy on.
Every payload, if it ever ran, would call `window.__xss()` (a binding that counts into Python),
open a dialog, or fetch from http://attacker.test; the suite counts all three while replies
stream, after they complete, after a reload, and on the admin's transcript pages, and expects 0.
A control injects a handler into the page itself to show that the detectors and the CSP's
violation reports work (the report reaches /metrics).
"""

import os
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
from django.urls import reverse
from playwright.sync_api import Page, Request, expect

from studies.models import FinalSurvey, Participant
from tests.e2e.pages import (
    CspWatch,
    enter_chat,
    finish_chat,
    log_in_staff,
    scripted_study,
    send,
)

pytestmark = [pytest.mark.e2e]

METRICS_TOKEN = "xss-suite-metrics-token-0123456789abcdef"
ATTACKER = "http://attacker.test"
# One per line of a reply; each would call __xss() or reach the attacker if it ever ran.
PAYLOADS = [
    "<script>__xss()</script>",
    '<img src=x onerror="__xss()">',
    "<svg onload=__xss()></svg>",
    '<svg><script href="data:,__xss()"></script></svg>',
    "[click me](javascript:__xss())",
    "[encoded](&#106;avascript:__xss%28%29)",
    "[data link](data:text/html;base64,PHNjcmlwdD5wYXJlbnQuX194c3MoKTwvc2NyaXB0Pg==)",
    '<iframe srcdoc="<script>parent.__xss()</script>"></iframe>',
    '<a href="#" onclick="__xss()" onmouseover="__xss()">hover</a>',
    '<div style="background:url(http://attacker.test/inline-style)">styled</div>',
    "<style>body{background:url(http://attacker.test/style-tag)}</style>",
    "&lt;img src=x onerror=__xss()&gt; and &#60;script&#62;__xss()&#60;/script&#62;",
    "\uff1cscript\uff1e__xss()\uff1c/script\uff1e <scr\u200bipt>__xss()</script>",
    "![tracker](http://attacker.test/markdown-image.png)",
    "<http://attacker.test/autolink> and <javascript:__xss()>",
    '<img src="http://attacker.test/img.png"><link rel=prefetch href="http://attacker.test/pf">',
    '<meta http-equiv="refresh" content="0;url=javascript:__xss()">',
    '<base href="http://attacker.test/"><form action="http://attacker.test/f"><button>go</button>',
    '<object data="javascript:__xss()"></object><embed src="javascript:__xss()">',
    '<details open ontoggle="__xss()"><summary>x</summary></details>',
    '<input autofocus onfocus="__xss()">',
    "`<img src=x onerror=__xss()>` and ```\n<script>__xss()</script>\n```",
]
HOSTILE = "\n\n".join(PAYLOADS)


@dataclass
class Detectors:
    """Script executions, dialogs and requests that leave the site, seen by one browser context."""

    origin: str
    executions: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    outbound: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> "Detectors":
        page.context.expose_function("__xss", lambda *a: self.executions.append(page.url))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss())[-1])
        page.context.on("request", self._request)
        return self

    def _request(self, request: Request) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in ("data", "blob", "about"):
            return
        if f"{parts.scheme}://{parts.netloc}".replace("ws", "http", 1) != self.origin:
            self.outbound.append(request.url)

    def counts(self) -> tuple[int, int, int]:
        return len(self.executions), len(self.dialogs), len(self.outbound)


@pytest.fixture
def metrics_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turn /metrics on in the web server (its environment is copied when it starts)."""
    monkeypatch.setenv("METRICS_TOKEN", METRICS_TOKEN)


def violation_reports(base_url: str) -> float:
    request = urllib.request.Request(
        f"{base_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    name = "collabllm_csp_violations_total"
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(name))


def read_like_a_person(page: Page) -> None:
    """Hover every message (mouse handlers would fire) and check that links keep safe schemes."""
    for body in page.locator("li.message .body").all():
        body.hover()
    for link in page.locator("li.message .body a").all():
        href = link.get_attribute("href") or ""
        assert urlsplit(href).scheme in ("http", "https", "mailto"), href


def wait_for_reports(base_url: str, page: Page, above: float) -> float:
    """Poll /metrics until the CSP report count passes `above` (browsers send reports lazily)."""
    for _ in range(50):
        seen = violation_reports(base_url)
        if seen > above:
            return seen
        page.wait_for_timeout(100)
    return violation_reports(base_url)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_hostile_content_runs_nowhere_with_the_policy_on(
    metrics_env, web_server, browsing, scripted_model
):
    assert os.environ["METRICS_TOKEN"] == METRICS_TOKEN
    page = browsing.page
    detect = Detectors(web_server).attach(page)
    csp = CspWatch().attach(page.context)
    study = scripted_study(scripted_model, min_turns=1, rating_every=0)
    scripted_model.replies += [HOSTILE, HOSTILE]
    reports_before = violation_reports(web_server)

    enter_chat(page, study, "xss1")
    # While streaming: the reply's text grows word by word in the bubble.
    page.locator("#composer-text").fill(HOSTILE)
    page.get_by_role("button", name="Send").click()
    streaming = page.locator('li.message.assistant[data-status="streaming"] .body')
    expect(streaming).to_contain_text("__xss", timeout=30_000)
    expect(page.locator('li.message.assistant[data-status="complete"]')).to_have_count(1)
    read_like_a_person(page)
    send(page, "[x](javascript:__xss()) <img src=x onerror=__xss()>", replies=2)
    read_like_a_person(page)
    page.reload()  # after reload: the transcript comes back from the server
    expect(page.locator('li.message.assistant[data-status="complete"]')).to_have_count(2)
    read_like_a_person(page)
    user_bodies = page.locator("li.message.user .body")
    expect(user_bodies.first).to_contain_text("<script>__xss()</script>")  # shown as text

    finish_chat(page)
    page.get_by_label("Your final document").fill(HOSTILE)
    page.locator('input[name="document_quality"][value="8"]').check()
    page.locator('input[name="overall_interaction"][value="9"]').check()
    page.get_by_label("What did the assistant do well?").fill(PAYLOADS[1] + PAYLOADS[7])
    page.get_by_label("What could the assistant do better?").fill(PAYLOADS[4] + PAYLOADS[9])
    page.get_by_role("button", name="Submit").click()
    expect(page.locator("#completion-code")).to_be_visible()
    participant = Participant.objects.get(study=study)
    assert PAYLOADS[0] in FinalSurvey.objects.get(participant=participant).document_text

    log_in_staff(page.context, web_server)
    for url in [
        reverse("admin:studies_participant_change", args=[participant.pk]),
        reverse("admin:studies_participant_changelist"),
        reverse("admin:studies_study_monitor", args=[study.pk]),
    ]:
        page.goto(url)
        page.wait_for_load_state("load")
        page.mouse.move(200, 300)
    assert detect.counts() == (0, 0, 0), detect
    assert csp.violations == []
    assert violation_reports(web_server) == reports_before

    # Control: a handler put straight into the page is stopped by the CSP, reported, and counted.
    page.evaluate(
        """() => { const d = document.createElement("div");
           d.innerHTML = '<img src="data:," onload="__xss()">'; document.body.append(d); }"""
    )
    assert wait_for_reports(web_server, page, reports_before) == reports_before + 1
    for _ in range(50):  # the page's violation event reaches Python a moment later
        if csp.violations:
            break
        page.wait_for_timeout(100)
    assert detect.executions == [] and len(csp.violations) == 1
    assert csp.violations[0].startswith("script-src"), csp.violations
    page.evaluate("() => window.__xss()")
    assert len(detect.executions) == 1  # the detector itself works
