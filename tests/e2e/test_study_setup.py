"""A Study admin (not a superuser) sets a study up entirely through the forms, no JSON typed:
the broken check and the unreachable arm are refused with what to fix, then it goes live."""

import importlib
import os
from pathlib import Path

import pytest
from django.apps import apps as global_apps
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test import Client
from django.urls import reverse
from playwright.sync_api import Page, expect

from studies.models import Condition, Study
from tests.e2e.pages import CspWatch
from tests.factories import ModelEndpointFactory

pytestmark = [pytest.mark.e2e]

WIDTH = 1280


def log_in_study_admin(page: Page, base_url: str) -> None:
    """A staff user in the "Study admin" group (made as migration 0006 makes it)."""
    if not Group.objects.filter(name="Study admin").exists():
        migration = importlib.import_module(
            "studies.migrations.0006_researcher_roles_protect_records"
        )
        migration.researcher_groups_create(global_apps, connection.schema_editor())
    user = User.objects.create_user("setter", is_staff=True)
    user.groups.add(Group.objects.get(name="Study admin"))
    client = Client()
    client.force_login(user)
    cookie = client.cookies["sessionid"]
    page.context.add_cookies([{"name": "sessionid", "value": cookie.value, "url": base_url}])


def shoot(page: Page, name: str) -> None:
    """A full-page screenshot where E2E_SHOTS names a folder (for looking at the layout)."""
    if folder := os.environ.get("E2E_SHOTS"):
        page.screenshot(path=str(Path(folder) / f"setup-{name}.png"), full_page=True)


def fits_the_screen(page: Page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth") <= WIDTH


def messages(page: Page) -> str:
    return page.locator("ul.messagelist").inner_text()


def save(page: Page) -> None:
    with page.expect_navigation():
        page.locator('input[name="_continue"]').click()


def fill_study(page: Page) -> None:
    page.get_by_label("Title:").fill("Setup by forms")
    page.get_by_label("Title:").press("Tab")
    expect(page.get_by_label("Slug:")).to_have_value("setup-by-forms")  # prepopulated
    page.get_by_label("Consent text:").fill("You agree to take part.")
    page.get_by_label("Block size:").fill("2")
    check = "#id_comprehension_questions"
    page.locator(f"{check}-0-question").fill("Who decides what goes into the document?")
    page.locator(f"{check}-0-choice-0").fill("The assistant")
    page.locator(f"{check}-0-choice-1").fill("You do")  # no correct answer marked: broken
    page.get_by_label("Min active minutes").fill("2")


def add_arm(page: Page, n: int, key: str, endpoint: str, cap: str) -> None:
    page.get_by_role("button", name="Add another Condition").click()
    row = f"#id_conditions-{n}"
    page.locator(f"{row}-key").fill(key)
    page.locator(f"{row}-label").fill(f"Arm {key}")
    page.locator(f"{row}-endpoint").select_option(label=endpoint)
    page.locator(f"{row}-system_prompt").select_option("collabllm" if n else "none")
    page.locator(f"{row}-generation_params_temperature").fill("0.7")
    page.locator(f"{row}-generation_params_max_tokens").fill("256")
    page.locator(f"{row}-cap").fill(cap)


def add_task(page: Page) -> None:
    page.get_by_role("button", name="Add another Task").click()
    page.locator("#id_tasks-0-document_type").select_option("blog_post")
    page.locator("#id_tasks-0-topic").fill("A trip")
    page.locator("#id_tasks-0-intent_questions").fill("Who reads it?\nHow long should it be?")


def go_live(page: Page, study: Study) -> None:
    page.goto(reverse("admin:studies_study_changelist"))
    page.locator(f'input.action-select[value="{study.pk}"]').check()
    page.locator('select[name="action"]').select_option("go_live")
    with page.expect_navigation():
        page.locator('button[name="index"]').click()


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_a_study_admin_sets_up_a_study_through_forms_and_goes_live(web_server, browsing):
    page = browsing.page
    page.set_viewport_size({"width": WIDTH, "height": 900})
    watch = CspWatch().attach(page.context)
    ModelEndpointFactory(name="local-model")
    log_in_study_admin(page, web_server)

    page.goto(reverse("admin:studies_study_add"))
    fill_study(page)
    add_arm(page, 0, "base", "local-model", cap="")
    add_arm(page, 1, "collab", "local-model", cap="0")  # nobody can reach it
    add_task(page)
    assert fits_the_screen(page)
    save(page)

    errors = page.locator(".field-comprehension_questions .errorlist")
    expect(errors).to_contain_text("Question 1: choose the correct answer.")
    assert not Study.objects.filter(slug="setup-by-forms").exists()
    shoot(page, "refused")
    page.locator("#id_comprehension_questions-0-answer-1").check()
    save(page)
    expect(page.locator("ul.messagelist")).to_contain_text("was added successfully")

    study = Study.objects.get(slug="setup-by-forms")
    assert study.comprehension_questions[0]["answer"] == 1
    assert study.exclusion_rules == {"min_active_minutes": 2.0}
    assert Condition.objects.get(study=study, key="collab").generation_params == {
        "temperature": 0.7,
        "max_tokens": 256,
    }
    assert fits_the_screen(page)
    shoot(page, "saved")

    go_live(page, study)
    expect(page.locator("ul.messagelist")).to_contain_text("needs 1 fix(es) to go live")
    assert "Arm collab: its cap is 0" in messages(page)
    study.refresh_from_db()
    assert study.status == Study.Status.DRAFT

    page.goto(reverse("admin:studies_study_change", args=[study.pk]))
    page.locator("#id_conditions-1-cap").fill("")
    save(page)
    go_live(page, study)
    expect(page.locator("ul.messagelist")).to_contain_text(
        "setup-by-forms is now live.", ignore_case=True
    )
    study.refresh_from_db()
    assert study.status == Study.Status.LIVE
    assert watch.violations == [] and browsing.errors == []
