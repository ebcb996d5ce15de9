"""Every page works in Chromium under the Content-Security-Policy, with no violation raised; the
chat's draft is kept per participant, resent with its own idempotency key, and forgotten at the end.
"""

import json
import re
import uuid

import pytest
from django.urls import reverse
from playwright.sync_api import Page, expect

from studies.models import Message, Participant, Study
from tests.e2e.pages import (
    CspWatch,
    enter_chat,
    finish_chat,
    log_in_staff,
    scripted_study,
    send,
)
from training.models import TrainingRun, TrainingStage

pytestmark = [pytest.mark.e2e]


def draft_key(page: Page) -> str:
    return page.evaluate("document.body.dataset.draftKey")


def stored_draft(page: Page, key: str) -> dict | None:
    value = page.evaluate("(k) => localStorage.getItem(k)", key)
    return json.loads(value) if value else None


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_a_participant_goes_through_every_step_without_a_policy_violation(
    web_server, browsing, scripted_model
):
    page = browsing.page
    watch = CspWatch().attach(page.context)
    study = scripted_study(scripted_model, min_turns=1, rating_every=1)
    scripted_model.replies.append("A **bold** reply with a [link](https://example.org/).")
    enter_chat(page, study, "csp1")  # the socket connects: connect-src 'self' covers ws:
    send(page, "Help me write.", replies=1)
    page.locator('#rating input[name="score"][value="7"]').check()
    page.get_by_role("button", name="Submit rating").click()
    finish_chat(page)
    page.get_by_label("Your final document").fill("The final text.")
    page.locator('input[name="document_quality"][value="8"]').check()
    page.locator('input[name="overall_interaction"][value="9"]').check()
    page.get_by_label("What did the assistant do well?").fill("Fine.")
    page.get_by_label("What could the assistant do better?").fill("Nothing.")
    page.get_by_role("button", name="Submit").click()
    expect(page.locator("#completion-code")).to_have_text(study.completion_code)
    assert watch.violations == [] and browsing.errors == []


def admin_urls(study: Study, participant: Participant, run: TrainingRun) -> list[str]:
    names = [
        ("admin:index", []),
        ("admin:studies_study_changelist", []),
        ("admin:studies_study_add", []),
        ("admin:studies_study_change", [study.pk]),
        ("admin:studies_study_monitor", [study.pk]),
        ("admin:studies_study_report", [study.pk]),
        ("admin:studies_participant_changelist", []),
        ("admin:studies_participant_change", [participant.pk]),
        ("admin:studies_modelendpoint_changelist", []),
        ("admin:training_trainingrun_changelist", []),
        ("admin:training_trainingrun_add", []),
        ("admin:training_trainingrun_progress", [run.pk]),
        ("admin:password_change", []),
    ]
    return [reverse(name, args=args) for name, args in names]


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_admin_pages_and_the_monitor_controls_work_under_the_policy(
    web_server, browsing, scripted_model, tmp_path
):
    page = browsing.page
    watch = CspWatch().attach(page.context)
    study = scripted_study(scripted_model)
    enter_chat(page, study, "adm1")
    send(page, "A message for the transcript.", replies=1)
    participant = Participant.objects.get(study=study)
    run = TrainingRun.objects.create(
        name="smoke", base_model="/models/base", policy_endpoint=study.conditions.first().endpoint,
        output_dir=str(tmp_path),
    )  # fmt: skip
    curve = [{"step": 1.0, "loss": 0.69, "rewards/margins": 0.0}, {"step": 2.0, "loss": 0.6}]
    TrainingStage.objects.create(run=run, name="dpo", position=3, status="running", curve=curve)
    log_in_staff(page.context, web_server)
    for url in admin_urls(study, participant, run):
        response = page.goto(url)
        assert response is not None and response.status == 200, url
        page.wait_for_load_state("load")
    # The loss curve is an SVG drawn without inline styles.
    page.goto(reverse("admin:training_trainingrun_progress", args=[run.pk]))
    expect(page.locator("#curve-dpo-1 circle")).to_have_count(2)
    expect(page.locator("#curve-dpo-2 circle")).to_have_count(1)
    # The changelist's action bar and the change form's scripts run (no inline script needed).
    page.goto(reverse("admin:studies_participant_changelist"))
    page.locator("input.action-select").first.check()
    expect(page.locator(".action-counter")).to_contain_text("1 of")
    # Closing from the monitor asks first (confirm.js, not an inline onsubmit).
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss())[-1])
    page.goto(reverse("admin:studies_study_monitor", args=[study.pk]))
    page.get_by_role("button", name="Close").click()
    page.wait_for_timeout(300)
    assert dialogs == ["Close this study? No one can enter it again."]
    study.refresh_from_db()
    assert study.status == Study.Status.LIVE
    assert watch.violations == [] and browsing.errors == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_the_draft_is_kept_per_participant_resent_with_its_key_and_cleared_at_the_end(
    web_server, browsing, scripted_model
):
    page = browsing.page
    study = scripted_study(scripted_model, min_turns=1, rating_every=0)
    enter_chat(page, study, "draft1")
    participant = Participant.objects.get(study=study)
    key = draft_key(page)
    # An opaque hash: neither the study, the recruiting id, the pk nor the public id.
    assert re.fullmatch(r"draft:[0-9a-f]{32}", key)
    assert all(s not in key for s in [study.slug, "draft1", str(participant.public_id)])
    page.locator("#composer-text").fill("Words not sent yet")
    page.reload()
    expect(page.locator("#composer-text")).to_have_value("Words not sent yet")
    assert stored_draft(page, key) == {"text": "Words not sent yet", "key": None}

    send(page, "First message", replies=1)
    first = Message.objects.get(participant=participant, role="user")
    assert stored_draft(page, key) is None
    # The ack was lost: the draft still holds the sent text and its key. A reload resends it with
    # that key, the server answers with the stored message, and the draft is cleared.
    page.evaluate(
        "([k, v]) => localStorage.setItem(k, v)",
        [key, json.dumps({"text": "First message", "key": str(first.idempotency_key)})],
    )
    page.reload()
    expect(page.locator('#chat[data-connected="true"]')).to_be_attached()
    page.wait_for_function("(k) => localStorage.getItem(k) === null", arg=key)
    assert Message.objects.filter(participant=participant, role="user").count() == 1
    # Sent while the socket was down, never seen by the server: the reload delivers it once.
    unsent = uuid.uuid4()
    page.evaluate(
        "([k, v]) => localStorage.setItem(k, v)",
        [key, json.dumps({"text": "Second message", "key": str(unsent)})],
    )
    page.reload()
    expect(page.locator('li.message.assistant[data-status="complete"]')).to_have_count(2)
    second = Message.objects.get(participant=participant, role="user", idempotency_key=unsent)
    assert second.content == "Second message"
    assert page.locator("#composer-text").input_value() == ""

    page.locator("#composer-text").fill("Left in the box")
    finish_chat(page)
    expect(page.get_by_label("Your final document")).to_be_visible()
    page.wait_for_function("(k) => localStorage.getItem(k) === null", arg=key)
    assert page.evaluate("Object.keys(localStorage).filter((k) => k.startsWith('draft'))") == []
