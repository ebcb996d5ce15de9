"""Researcher texts (consent, instructions, task brief) are sanitised Markdown on the pages."""

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from tests.factories import three_arm_study
from tests.studies.test_flow import enter, to_brief, url

pytestmark = pytest.mark.django_db

CONSENT = """# About this study

You will chat with an assistant
for about twenty minutes.

- Your data are pseudonymised.
- You may stop at any time.

<script>alert("consent")</script>
"""


def test_a_list_in_the_consent_text_renders_as_a_list(client):
    study = three_arm_study(consent_text=CONSENT)
    enter(client, study)
    page = client.get(url("consent", study)).content.decode()
    assert "<li>Your data are pseudonymised.</li>" in page
    assert "<li>You may stop at any time.</li>" in page
    assert "<h1>About this study</h1>" in page


def test_hard_wrapped_lines_stay_one_paragraph(client):
    study = three_arm_study(consent_text=CONSENT)
    enter(client, study)
    page = client.get(url("consent", study)).content.decode()
    assert "<p>You will chat with an assistant\nfor about twenty minutes.</p>" in page


def test_a_script_tag_in_the_consent_text_is_escaped_not_run(client):
    study = three_arm_study(consent_text=CONSENT)
    enter(client, study)
    page = client.get(url("consent", study)).content.decode()
    assert '<script>alert("consent")' not in page
    assert "&lt;script&gt;" in page


def test_instructions_and_the_task_brief_render_as_markdown(client):
    study = three_arm_study(instructions="Read **carefully**.\n\n<img src=x onerror=alert(1)>")
    study.tasks.update(brief="1. Plan\n2. Draft")
    participant = to_brief(client, study)
    task = study.tasks.filter(document_type=participant.document_type).first()
    page = client.post(url("brief", study), {"task": task.pk}).content.decode()
    assert "<strong>carefully</strong>" in page
    assert "<img" not in page
    assert "<ol>\n<li>Plan</li>\n<li>Draft</li>\n</ol>" in page


def test_the_admin_form_shows_the_declined_code():
    study = three_arm_study()
    staff = Client()
    staff.force_login(User.objects.create_superuser("r", "r@example.org", "pw-r-1"))
    page = staff.get(reverse("admin:studies_study_change", args=[study.pk])).content.decode()
    assert 'name="declined_code"' in page and study.declined_code in page
