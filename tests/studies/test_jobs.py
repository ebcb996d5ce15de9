"""Report runs that can be cancelled from the admin and never stay `running` or `queued` after
their worker is gone (studies/services/jobs.py)."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from studies.models import ReportRun
from studies.services import jobs, reports
from tests.studies.test_analyze import needs_report
from tests.studies.test_exports import build_world
from webapp.celery import app

pytestmark = pytest.mark.django_db
R = ReportRun.Status


@pytest.fixture(autouse=True)
def reports_dir(settings, tmp_path):
    settings.REPORTS_DIR = tmp_path / "reports"
    return settings.REPORTS_DIR


@pytest.fixture
def study():
    return build_world().study


def _queued(study, django_capture_on_commit_callbacks) -> ReportRun:
    with django_capture_on_commit_callbacks():  # not sent: no worker in these tests
        run = reports.report_run_queue(reports.report_run_create(study_id=study.pk, by="r"))
    run.refresh_from_db()
    return run


def test_a_queued_report_is_cancelled_at_once_and_a_late_delivery_does_nothing(
    study, django_capture_on_commit_callbacks
):
    run = _queued(study, django_capture_on_commit_callbacks)
    assert run.task_id
    assert jobs.job_cancel(ReportRun, run.pk) == R.CANCELLED
    assert reports.report_run_execute(run_id=run.pk).status == R.CANCELLED
    with pytest.raises(jobs.JobStateError):
        jobs.job_cancel(ReportRun, run.pk)


@needs_report
def test_a_building_report_stops_at_its_next_step_and_its_partial_folder_goes(
    study, django_capture_on_commit_callbacks
):
    run = _queued(study, django_capture_on_commit_callbacks)
    ReportRun.objects.filter(pk=run.pk).update(status=R.RUNNING)  # a worker has taken it
    assert jobs.job_cancel(ReportRun, run.pk) == R.RUNNING  # asked to stop, still running
    run = reports.report_run_execute(run_id=run.pk)
    assert run.status == R.CANCELLED and run.finished_at and not run.out_dir
    assert not reports.report_run_dir(run).exists()


def test_a_running_report_whose_worker_is_gone_is_interrupted_and_can_be_retried(
    study, settings, django_capture_on_commit_callbacks
):
    quiet = _queued(study, django_capture_on_commit_callbacks)
    orphan = _queued(study, django_capture_on_commit_callbacks)
    alive = _queued(study, django_capture_on_commit_callbacks)
    stale = timezone.now() - timedelta(minutes=settings.JOB_STALE_MINUTES, seconds=1)
    ReportRun.objects.filter(pk=quiet.pk).update(status=R.RUNNING, heartbeat_at=stale)
    ReportRun.objects.filter(pk__in=[orphan.pk, alive.pk]).update(
        status=R.RUNNING, heartbeat_at=timezone.now()
    )
    # No worker answers: only the heartbeat counts.
    assert jobs.recover_interrupted(workers=None)["reports"] == [quiet.pk]
    # The workers answer: only `alive`'s task is running on one of them.
    found = jobs.recover_interrupted(workers={alive.task_id})
    assert found["reports"] == [orphan.pk]
    assert ReportRun.objects.get(pk=alive.pk).status == R.RUNNING
    assert ReportRun.objects.get(pk=orphan.pk).status == R.INTERRUPTED
    with django_capture_on_commit_callbacks() as sent:
        retried = reports.report_run_retry(run_id=orphan.pk)
    assert retried.status == R.QUEUED and retried.task_id != orphan.task_id and len(sent) == 1


def test_a_report_in_a_long_step_stays_running_while_a_worker_says_it_runs_it(
    study, settings, django_capture_on_commit_callbacks
):
    # One step (an analysis, a pilot participant, a training step on a CPU) can outlast
    # JOB_STALE_MINUTES: the heartbeat is only the fallback for when no worker answers.
    busy = _queued(study, django_capture_on_commit_callbacks)
    stale = timezone.now() - timedelta(minutes=settings.JOB_STALE_MINUTES, seconds=1)
    ReportRun.objects.filter(pk=busy.pk).update(status=R.RUNNING, heartbeat_at=stale)
    assert jobs.recover_interrupted(workers={busy.task_id})["reports"] == []
    assert ReportRun.objects.get(pk=busy.pk).status == R.RUNNING
    assert jobs.recover_interrupted(workers=None)["reports"] == [busy.pk]


def test_a_running_report_missing_from_a_partial_worker_reply_stays_running_while_unacked(
    study, django_capture_on_commit_callbacks
):
    # A busy worker can miss inspect's one-second window: the others' reply then lacks its task,
    # but the task's message is still delivered-and-unacknowledged (acks_late) in the broker.
    busy = _queued(study, django_capture_on_commit_callbacks)
    ReportRun.objects.filter(pk=busy.pk).update(status=R.RUNNING, heartbeat_at=timezone.now())
    found = jobs.recover_interrupted(workers={"another-task"}, broker={busy.task_id})
    assert found["reports"] == []
    assert ReportRun.objects.get(pk=busy.pk).status == R.RUNNING


def test_a_queued_report_counts_as_lost_only_when_no_queue_holds_its_message(
    study, django_capture_on_commit_callbacks
):
    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge("reports")
    waiting = _queued(study, django_capture_on_commit_callbacks)
    lost = _queued(study, django_capture_on_commit_callbacks)
    from studies import tasks

    tasks.build_study_report.apply_async((waiting.pk,), task_id=waiting.task_id)  # in Redis
    long_ago = timezone.now() - jobs.QUEUED_GRACE - timedelta(seconds=1)
    ReportRun.objects.filter(pk__in=[waiting.pk, lost.pk]).update(created_at=long_ago)
    try:
        broker = jobs.broker_task_ids()
        assert waiting.task_id in broker and lost.task_id not in broker
        assert jobs.recover_interrupted(workers=None, broker=broker)["reports"] == [lost.pk]
    finally:
        with app.connection_for_write() as connection:
            connection.default_channel.queue_purge("reports")
    assert ReportRun.objects.get(pk=waiting.pk).status == R.QUEUED


def test_the_report_page_offers_cancel_while_it_builds_and_retry_once_interrupted(
    study, researcher, django_capture_on_commit_callbacks
):
    run = _queued(study, django_capture_on_commit_callbacks)
    page = reverse("admin:studies_study_report", args=[study.pk])
    cancel = reverse("admin:studies_study_report_cancel", args=[study.pk, run.pk])
    retry = reverse("admin:studies_study_report_retry", args=[study.pk, run.pk])
    assert cancel in researcher.get(page).content.decode()
    ReportRun.objects.filter(pk=run.pk).update(status=R.INTERRUPTED)
    html = researcher.get(page).content.decode()
    assert retry in html and "interrupted" in html and cancel not in html
    with django_capture_on_commit_callbacks():
        assert researcher.post(retry).status_code == 302
    assert ReportRun.objects.get(pk=run.pk).status == R.QUEUED
    assert researcher.post(cancel).status_code == 302
    assert ReportRun.objects.get(pk=run.pk).status == R.CANCELLED


def test_an_export_cancelled_while_it_runs_leaves_no_folder_and_no_zip(
    study, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks():
        export = reports.report_run_queue(reports.export_run_create(study_id=study.pk, fmt="csv"))
    ReportRun.objects.filter(pk=export.pk).update(status=R.RUNNING)  # a worker has taken it
    assert jobs.job_cancel(ReportRun, export.pk) == R.RUNNING
    export = reports.export_run_execute(run_id=export.pk)
    assert export.status == R.CANCELLED and not export.out_dir
    folder = reports.export_dir(study)
    assert not folder.exists() or not any(folder.iterdir())
    assert reports.export_zips(study) == []


def test_an_export_runs_to_a_zip_and_is_offered_cancel_then_retry_on_the_report_page(
    study, researcher, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks():
        export = reports.report_run_queue(reports.export_run_create(study_id=study.pk, fmt="csv"))
    page = reverse("admin:studies_study_report", args=[study.pk])
    cancel = reverse("admin:studies_study_report_cancel", args=[study.pk, export.pk])
    assert cancel in researcher.get(page).content.decode()
    assert researcher.post(cancel).status_code == 302
    assert ReportRun.objects.get(pk=export.pk).status == R.CANCELLED
    retry = reverse("admin:studies_study_report_retry", args=[study.pk, export.pk])
    assert retry in researcher.get(page).content.decode()
    with django_capture_on_commit_callbacks():
        researcher.post(retry)
    done = reports.export_run_execute(run_id=export.pk)
    assert done.status == R.DONE and [p.name for p in reports.export_zips(study)] == [
        done.out_dir.rsplit("/", 1)[1]
    ]
    assert reports.latest_report_run(study) is None  # an export is not a report


def test_an_export_cancelled_in_the_same_second_as_a_finished_one_keeps_that_ones_zip(
    study, monkeypatch, django_capture_on_commit_callbacks
):
    # Two exports of one format in the same second (a double click, two reports workers): the
    # cancelled one must clean only its own folder and zip.
    from types import SimpleNamespace

    fixed = timezone.now()
    monkeypatch.setattr(reports, "timezone", SimpleNamespace(now=lambda: fixed))
    with django_capture_on_commit_callbacks():
        first = reports.report_run_queue(reports.export_run_create(study_id=study.pk, fmt="csv"))
        second = reports.report_run_queue(reports.export_run_create(study_id=study.pk, fmt="csv"))
    first = reports.export_run_execute(run_id=first.pk)
    assert first.status == R.DONE
    ReportRun.objects.filter(pk=second.pk).update(status=R.RUNNING, cancel_requested=True)
    assert reports.export_run_execute(run_id=second.pk).status == R.CANCELLED
    assert [str(p) for p in reports.export_zips(study)] == [first.out_dir]


def _retried_while_building(run: ReportRun, monkeypatch, *, retry: bool) -> None:
    """While the worker builds, the row is marked interrupted (its worker seemed gone) and, with
    `retry`, a researcher presses Retry (a new task id, queued again)."""
    real = reports.analyze_study

    def meanwhile(*args, **kwargs):
        ReportRun.objects.filter(pk=run.pk).update(status=R.INTERRUPTED)
        if retry:
            ReportRun.objects.filter(pk=run.pk).update(status=R.QUEUED, task_id="the-retry")
        return real(*args, **kwargs)

    monkeypatch.setattr(reports, "analyze_study", meanwhile)


@needs_report
def test_a_report_finishing_after_a_retry_leaves_the_retried_run_alone(
    study, django_capture_on_commit_callbacks, monkeypatch
):
    run = _queued(study, django_capture_on_commit_callbacks)
    _retried_while_building(run, monkeypatch, retry=True)

    reports.report_run_execute(run_id=run.pk)

    run.refresh_from_db()
    assert (run.status, run.task_id, run.finished_at) == (R.QUEUED, "the-retry", None)


@needs_report
def test_a_report_wrongly_marked_interrupted_that_then_finishes_is_done(
    study, django_capture_on_commit_callbacks, monkeypatch
):
    run = _queued(study, django_capture_on_commit_callbacks)
    _retried_while_building(run, monkeypatch, retry=False)

    assert reports.report_run_execute(run_id=run.pk).status == R.DONE
