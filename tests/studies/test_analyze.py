"""analyze_study, report runs built by the Celery task, and the report page in the admin."""

import json
import zipfile
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from studies import tasks
from studies.demo import seed_demo
from studies.models import ReportRun
from studies.services import participants as svc
from studies.services import reports
from tests.factories import ParticipantFactory
from tests.studies.test_exports import build_world, chat, finish

pytestmark = pytest.mark.django_db


def report_builder_available() -> bool:
    try:
        from analysis.report import build_report  # noqa: F401
    except ImportError:
        return False
    return True


needs_report = pytest.mark.skipif(
    not report_builder_available(), reason="analysis.report.build_report is not written yet"
)


@pytest.fixture
def world():
    return build_world()


@pytest.fixture(autouse=True)
def reports_dir(settings, tmp_path):
    settings.REPORTS_DIR = tmp_path / "reports"
    return settings.REPORTS_DIR


def fake_builder(calls, *, fail=False):
    """Stands in for analysis.report.build_report: reports progress, checks the run, writes."""

    def build(export_dir, out_dir, **kwargs):
        calls.append((export_dir, kwargs))
        kwargs["progress"]("statistics", 0.5)
        run = ReportRun.objects.get()
        calls.append((run.status, run.progress, run.step))
        if fail:
            raise ValueError("too few participants")
        out_dir.mkdir(parents=True)
        (out_dir / "report.html").write_text("<h1>Report</h1>")
        (out_dir / "summary.json").write_text("{}")
        (out_dir / "notebook.ipynb").write_text("{}")
        return {"sample": {"n_analysed": 5}}

    return build


@needs_report
def test_analyze_study_exports_then_writes_the_report(world, tmp_path, capsys):
    call_command("analyze_study", world.study.slug, "--out", str(tmp_path / "out"))
    out = tmp_path / "out"
    assert (out / "export" / "participants.parquet").exists()
    assert (out / "export" / "manifest.json").exists()
    report = out / "report"
    assert (report / "report.html").exists() and (report / "summary.json").exists()
    summary = json.loads((report / "summary.json").read_text())
    assert summary["export"]["study"] == world.study.slug
    assert str(report / "report.html") in capsys.readouterr().out


@needs_report
def test_analyze_study_reports_pilots_when_asked_in_csv(world, tmp_path):
    result = reports.analyze_study(
        world.study, tmp_path / "out", include_pilot=True, fmt="csv", reference_arm="base"
    )
    assert (result.export.path / "participants.csv").exists()
    assert result.export.row_counts["participants"] == 6
    assert (result.report_dir / "report.html").exists()


@needs_report
def test_analyze_study_reports_on_the_demo_study_after_a_few_pilots(tmp_path, settings):
    settings.CHAT_TURNS_PER_MINUTE = 100
    study = seed_demo()
    for i in range(6):
        pilot = ParticipantFactory(study=study, external_id=f"pilot:{i}", is_pilot=True)
        svc.participant_consent(participant_id=pilot.pk)
        pilot.refresh_from_db()
        task = study.tasks.filter(document_type=pilot.document_type).first()
        svc.participant_choose_topic(participant_id=pilot.pk, task_id=task.pk)
        answers = ["an answer"] * len(task.intent_questions)
        svc.participant_submit_intent(participant_id=pilot.pk, answers=answers)
        svc.participant_check_comprehension(participant_id=pilot.pk, answers=[1])
        chat(pilot, 8, {3: 4 + i % 3, 6: 5 + i % 4})
        finish(pilot, quality=5 + i % 4)
    out = tmp_path / "out"
    call_command("analyze_study", "demo", "--out", str(out), "--include-pilot")
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["export"]["row_counts"]["participants"] == 6
    assert (out / "report" / "report.html").stat().st_size > 0


def test_analyze_study_refuses_an_unknown_reference_arm(world, tmp_path):
    with pytest.raises(CommandError, match="no arm 'nope'"):
        call_command(
            "analyze_study", world.study.slug, "--out", str(tmp_path), "--reference-arm", "nope"
        )


def test_analyze_study_refuses_an_earlier_report_unless_forced(world, tmp_path, monkeypatch):
    monkeypatch.setattr(reports, "_build_report", lambda: fake_builder([]))
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "old.html").write_text("old")
    with pytest.raises(CommandError, match="not empty"):
        call_command("analyze_study", world.study.slug, "--out", str(tmp_path))
    monkeypatch.setattr(reports, "_build_report", lambda: lambda *a, **k: {})
    call_command("analyze_study", world.study.slug, "--out", str(tmp_path), "--force")
    assert not (tmp_path / "report" / "old.html").exists()


def test_the_report_task_records_progress_while_it_runs_and_the_summary_when_done(
    world, monkeypatch, reports_dir
):
    calls = []
    monkeypatch.setattr(reports, "_build_report", lambda: fake_builder(calls))
    run = reports.report_run_create(study_id=world.study.pk, by="researcher", reference_arm="base")
    assert tasks.build_study_report(run.pk) == "done"
    export_dir, kwargs = calls[0]
    assert kwargs["reference_arm"] == "base" and kwargs["seed"] == 0
    assert kwargs["include_pilot"] is False
    status, progress, step = calls[1]
    assert status == "running" and step == "statistics"
    assert progress == pytest.approx(reports.EXPORT_SHARE + 0.5 * (1 - reports.EXPORT_SHARE))
    run.refresh_from_db()
    assert (run.status, run.progress, run.step) == ("done", 1.0, "done")
    assert run.summary == {"sample": {"n_analysed": 5}} and run.finished_at is not None
    folder = reports_dir / world.study.slug / f"run-{run.pk}"
    assert run.out_dir == str(folder) and export_dir == folder / "export"
    with zipfile.ZipFile(folder / "export.zip") as archive:
        assert "export/participants.parquet" in archive.namelist()


def test_a_failed_run_keeps_the_error_and_a_finished_run_is_not_built_again(world, monkeypatch):
    monkeypatch.setattr(reports, "_build_report", lambda: fake_builder([], fail=True))
    run = reports.report_run_create(study_id=world.study.pk)
    assert tasks.build_study_report(run.pk) == "failed"
    run.refresh_from_db()
    assert run.error == "ValueError: too few participants" and run.finished_at is not None
    calls = []
    monkeypatch.setattr(reports, "_build_report", lambda: fake_builder(calls))
    assert tasks.build_study_report(run.pk) == "failed" and calls == []


@needs_report
def test_the_report_task_builds_the_real_report(world):
    run = reports.report_run_create(study_id=world.study.pk, include_pilot=True)
    assert tasks.build_study_report(run.pk) == "done"
    run.refresh_from_db()
    assert run.summary["export"]["include_pilot"] is True


def report_url(study, *parts):
    if not parts:
        return reverse("admin:studies_study_report", args=[study.pk])
    return reverse("admin:studies_study_report_file", args=[study.pk, *parts])


def test_the_build_report_action_queues_a_run_after_commit(
    researcher, world, monkeypatch, django_capture_on_commit_callbacks
):
    queued = []

    def sent(args, task_id):
        queued.append((*args, task_id))

    monkeypatch.setattr(tasks.build_study_report, "apply_async", sent)
    with django_capture_on_commit_callbacks(execute=True):
        response = researcher.post(
            reverse("admin:studies_study_changelist"),
            {"action": "build_report", "_selected_action": [world.study.pk]},
        )
    assert response.status_code == 302
    run = ReportRun.objects.get()
    assert queued == [(run.pk, run.task_id)] and run.task_id  # the id recovery looks for
    assert run.status == "queued" and run.created_by == "researcher"


def test_the_report_page_polls_while_the_run_builds(researcher, world):
    run = reports.report_run_create(study_id=world.study.pk)
    ReportRun.objects.filter(pk=run.pk).update(status="running", progress=0.42, step="exported")
    page = researcher.get(report_url(world.study)).content.decode()
    assert 'hx-trigger="every 2s' in page and "42%" in page and "exported" in page
    partial = researcher.get(report_url(world.study), headers={"HX-Request": "true"})
    assert partial.content.decode().lstrip().startswith('<section id="report-status"')


def test_the_report_page_frames_the_finished_report_and_links_its_downloads(
    researcher, world, monkeypatch
):
    monkeypatch.setattr(reports, "_build_report", lambda: fake_builder([]))
    run = reports.report_run_create(study_id=world.study.pk)
    tasks.build_study_report(run.pk)
    page = researcher.get(report_url(world.study)).content.decode()
    assert "hx-trigger" not in page
    framed_url = report_url(world.study, run.pk, "report.html")
    assert f'<iframe title="Analysis report" sandbox src="{framed_url}"' in page
    framed = researcher.get(report_url(world.study, run.pk, "report.html"))
    assert framed["X-Frame-Options"] == "SAMEORIGIN"
    assert b"".join(framed.streaming_content) == b"<h1>Report</h1>"
    download = researcher.get(report_url(world.study, run.pk, "export.zip"))
    assert download["Content-Disposition"].startswith("attachment")
    b"".join(download.streaming_content)  # consumed: the file is closed
    for name in ["manifest.json", "report", "..", "export"]:
        assert researcher.get(report_url(world.study, run.pk, name)).status_code == 404
    base = report_url(world.study)
    for path in [f"{run.pk}/..%2Fexport.zip", f"{run.pk}/report%2F..%2F..%2Fexport.zip"]:
        assert researcher.get(base + path).status_code in (301, 404)


def no_access_clients(world):
    participant_client = Client()
    session = participant_client.session
    session[f"participant:{world.study.slug}"] = world.done[0].pk
    session.save()
    non_staff = Client()
    non_staff.force_login(User.objects.create_user("someone", password="pw-someone-123"))
    staff_without_data = Client()
    staff = User.objects.create_user("helper", password="pw-helper-1234", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_study"))
    staff_without_data.force_login(staff)
    return {
        "anonymous": Client(),
        "participant": participant_client,
        "non-staff user": non_staff,
        "staff who may not view participants": staff_without_data,
    }


def test_only_staff_who_may_view_participants_get_reports_and_exports(
    world, monkeypatch, reports_dir
):
    monkeypatch.setattr(reports, "_build_report", lambda: fake_builder([]))
    run = reports.report_run_create(study_id=world.study.pk)
    tasks.build_study_report(run.pk)
    export = reports.export_run_create(study_id=world.study.pk)
    zip_name = Path(reports.export_run_execute(run_id=export.pk).out_dir).name
    urls = [
        report_url(world.study),
        *(report_url(world.study, run.pk, name) for name in reports_dir_files()),
        reverse("admin:studies_study_report_export", args=[world.study.pk, zip_name]),
    ]
    for who, client in no_access_clients(world).items():
        for url in urls:
            response = client.get(url)
            assert response.status_code in (302, 403), (who, url)
            if response.status_code == 302:
                assert "/admin/login/" in response.url, (who, url)
        response = client.post(
            reverse("admin:studies_study_changelist"),
            {"action": "export_data", "_selected_action": [world.study.pk], "export": "1",
             "fmt": "csv"},
        )  # fmt: skip
        # Refused: login, 403, or the changelist again (staff without actions) - never a zip.
        assert response.status_code in (200, 302, 403) and "zip" not in response.get(
            "Content-Type", ""
        ), who
        post = client.post(reverse("admin:studies_study_report_build", args=[world.study.pk]))
        assert post.status_code == 403 or post["Location"].startswith("/admin/login/"), who
    assert ReportRun.objects.filter(kind="report").count() == 1


def reports_dir_files():
    return ["report.html", "summary.json", "notebook.ipynb", "export.zip"]


def test_a_background_export_is_listed_and_downloadable_on_the_report_page(
    researcher, world, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(
        tasks.export_run, "apply_async", lambda args, task_id: tasks.export_run(*args)
    )
    with django_capture_on_commit_callbacks(execute=True):
        researcher.post(
            reverse("admin:studies_study_changelist"),
            {"action": "export_in_background", "_selected_action": [world.study.pk]},
        )
    [zip_path] = reports.export_zips(world.study)
    assert not zip_path.with_suffix("").exists()
    page = researcher.get(report_url(world.study)).content.decode()
    link = reverse("admin:studies_study_report_export", args=[world.study.pk, zip_path.name])
    assert link in page
    response = researcher.get(link)
    assert response["Content-Disposition"].startswith("attachment")
    b"".join(response.streaming_content)  # consumed: the file is closed
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
    assert any(n.endswith("/participants.parquet") for n in names)
    assert researcher.get(link.replace(".zip", "x.zip")).status_code == 404
