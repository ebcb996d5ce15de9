"""Training runs in the admin: progress, polling, retry, and a checkpoint as a study arm."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from studies.models import Condition, Study
from tests.factories import ModelEndpointFactory, StudyFactory
from tests.studies.formdata import form_data
from training.models import Checkpoint, TrainingRun, TrainingStage
from training.services import runs

pytestmark = pytest.mark.django_db
S = TrainingStage.Status


@pytest.fixture
def researcher() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("researcher", "r@example.org", "pw-r-1"))
    return client


@pytest.fixture
def viewer() -> Client:
    """Staff who may look at training runs but change nothing."""
    user = User.objects.create_user("viewer", "v@example.org", "pw-v-1", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_trainingrun", "view_checkpoint"])
    )
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def run(tmp_path, django_capture_on_commit_callbacks) -> TrainingRun:
    run = TrainingRun.objects.create(
        name="smoke",
        base_model="/models/base",
        policy_endpoint=ModelEndpointFactory(),
        output_dir=str(tmp_path),
    )
    with django_capture_on_commit_callbacks():
        runs.run_start(run_id=run.pk, by="researcher")
    TrainingStage.objects.filter(run=run, name="collect").update(
        status=S.RUNNING,
        done=3,
        total=12,
        started_at=timezone.now() - timezone.timedelta(minutes=1),
        heartbeat_at=timezone.now(),
        log="12:00:00 collecting 12 conversations",
    )
    TrainingStage.objects.filter(run=run, name="sft").update(
        status=S.FAILED, error="Traceback ...\nOSError: /models/base is not a folder"
    )
    return run


def _progress(run: TrainingRun) -> str:
    return reverse("admin:training_trainingrun_progress", args=[run.pk])


def test_the_progress_page_shows_counts_rate_eta_logs_and_errors(researcher, run):
    page = researcher.get(_progress(run)).content.decode()
    assert "3/12" in page and "collecting 12 conversations" in page
    assert "/min" in page and " s</td>" in page  # a rate and an ETA for the running stage
    assert "OSError: /models/base is not a folder" in page
    assert 'hx-trigger="every 2s' in page and "Retry" in page


def test_a_poll_returns_only_the_progress_section(researcher, run):
    response = researcher.get(_progress(run), headers={"HX-Request": "true"})
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="training-progress"')
    assert "<html" not in body


def test_a_finished_run_stops_polling(researcher, run):
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.SUCCEEDED)
    assert "hx-trigger" not in researcher.get(_progress(run)).content.decode()


def test_retry_queues_the_failed_stage_again(researcher, run, django_capture_on_commit_callbacks):
    sft = run.stage_rows.get(name="sft")
    with django_capture_on_commit_callbacks() as queued:
        response = researcher.post(reverse("admin:training_trainingrun_retry", args=[sft.pk]))
    assert response.status_code == 302 and len(queued) == 1
    sft.refresh_from_db()
    assert sft.status == S.QUEUED


def test_viewers_see_progress_but_cannot_retry_or_start(viewer, run):
    page = viewer.get(_progress(run)).content.decode()
    assert "3/12" in page and "Retry" not in page
    sft = run.stage_rows.get(name="sft")
    assert (
        viewer.post(reverse("admin:training_trainingrun_retry", args=[sft.pk])).status_code == 403
    )
    assert (
        viewer.post(reverse("admin:training_trainingrun_start", args=[run.pk])).status_code == 403
    )
    assert run.stage_rows.get(name="sft").status == S.FAILED


def test_strangers_are_sent_to_the_login(run):
    response = Client().get(_progress(run))
    assert response.status_code == 302 and "/admin/login/" in response.url


def test_a_run_is_configured_and_started_from_the_admin(
    researcher, tmp_path, django_capture_on_commit_callbacks
):
    endpoint = ModelEndpointFactory()
    add = reverse("admin:training_trainingrun_add")
    response = researcher.post(
        add,
        form_data(researcher.get(add).content.decode())  # the stage fields, at their defaults
        | {
            "name": "paper-settings",
            "base_model": "/models/base",
            "task_set": "document",
            "output_dir": str(tmp_path),
            "policy_endpoint": endpoint.pk,
            "json_mode": "json_schema",
            "window": 2,
            "samples": 3,
            "candidates": 2,
            "max_turns": 5,
            "max_tokens": 256,
            "token_clamp": "on",
            "token_scope": "assistant+user",
            "eval_tasks": 4,
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    run = TrainingRun.objects.get(name="paper-settings")
    assert run.created_by == "researcher" and run.stages["sft"]["learning_rate"] == 1e-5
    with django_capture_on_commit_callbacks() as queued:
        researcher.post(reverse("admin:training_trainingrun_start", args=[run.pk]))
    assert len(queued) == 1 and run.stage_rows.get(name="collect").status == S.QUEUED


def test_a_checkpoint_is_added_to_a_draft_study_from_the_admin(researcher, run, tmp_path):
    endpoint = ModelEndpointFactory(name="training-run", server="vllm")
    checkpoint = Checkpoint.objects.create(
        run=run,
        stage="dpo",
        adapter_path=str(tmp_path),
        adapter_name="collabllm-run1-dpo",
        endpoint=endpoint,
    )
    draft, live = StudyFactory(status=Study.Status.DRAFT), StudyFactory(status=Study.Status.LIVE)
    url = reverse("admin:training_checkpoint_add_to_study", args=[checkpoint.pk])
    form = researcher.get(url).content.decode()
    assert f'value="{draft.pk}"' in form and f'value="{live.pk}"' not in form
    response = researcher.post(url, {"study": live.pk})
    assert response.status_code == 200 and not Condition.objects.filter(study=live).exists()
    response = researcher.post(url, {"study": draft.pk})
    assert response.status_code == 302
    arm = Condition.objects.get(study=draft)
    assert (arm.model_name, arm.endpoint, arm.system_prompt) == (
        "collabllm-run1-dpo",
        endpoint,
        "collabllm",
    )
