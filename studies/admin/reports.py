"""Reports and exports in the admin: the report page (polled while a run builds), its files and
the zipped exports. All of it is participant data: only staff who may export and read transcripts.
"""

from functools import partial
from pathlib import Path

from csp.decorators import csp_replace, csp_update
from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.http import require_GET, require_POST

from studies.admin.common import render_admin_page
from studies.models import ReportRun, Study
from studies.services import jobs, reports
from studies.services.exports import FORMATS

RUN_FILES = {"report.html", "summary.json", "notebook.ipynb", "export.zip"}


class ExportForm(forms.Form):
    fmt = forms.ChoiceField(label="Format", choices=[(f, f) for f in FORMATS], initial="parquet")
    include_pilot = forms.BooleanField(label="Include pilot participants", required=False)
    raw_ids = forms.BooleanField(
        label="Raw recruiting ids (e.g. Prolific PIDs) instead of keyed hashes", required=False
    )
    confirm_raw_ids = forms.BooleanField(
        label="I confirm the download will hold personal data and I will store it accordingly",
        required=False,
    )

    def clean(self):
        data = super().clean()
        if data.get("raw_ids") and not data.get("confirm_raw_ids"):
            raise forms.ValidationError("Raw ids need the confirmation below them.")
        return data


def may_export(model_admin, request: HttpRequest, study: Study | None = None) -> bool:
    """Exports and reports hold every transcript: staff who may export and read transcripts."""
    user = request.user
    return (
        user.is_active
        and user.is_staff
        and model_admin.has_view_permission(request, study)
        and user.has_perms(
            ["studies.view_participant", "studies.view_transcripts", "studies.export_study"]
        )
    )


def report_urls(model_admin) -> list:
    """URL patterns under /admin/studies/study/<id>/report/ and /exports/, behind admin login."""
    wrap = model_admin.admin_site.admin_view
    name = f"{model_admin.opts.app_label}_{model_admin.opts.model_name}_report"
    views = [
        ("<int:study_id>/report/", report_page, name),
        ("<int:study_id>/report/build/", report_build, f"{name}_build"),
        ("<int:study_id>/report/<int:run_id>/cancel/", report_cancel, f"{name}_cancel"),
        ("<int:study_id>/report/<int:run_id>/retry/", report_retry, f"{name}_retry"),
        ("<int:study_id>/report/<int:run_id>/<str:name>", report_file, f"{name}_file"),
        ("<int:study_id>/exports/<str:name>", export_file, f"{name}_export"),
    ]
    return [
        path(route, wrap(partial(view, model_admin=model_admin)), name=n)
        for route, view, n in views
    ]


def _study(request: HttpRequest, study_id: int, model_admin) -> Study:
    study = get_object_or_404(Study, pk=study_id)
    if not may_export(model_admin, request, study):
        raise PermissionDenied
    return study


def report_url(study: Study) -> str:
    return reverse("admin:studies_study_report", args=[study.pk])


@require_GET
def report_page(request: HttpRequest, study_id: int, *, model_admin) -> HttpResponse:
    """The latest report run: progress while it builds, then the report and its downloads."""
    study = _study(request, study_id, model_admin)
    run = reports.latest_report_run(study)
    context = {
        "study": study,
        "run": run,
        "poll_url": report_url(study),
        "polling": run is not None
        and run.status in (ReportRun.Status.QUEUED, ReportRun.Status.RUNNING),
        "percent": round((run.progress if run else 0) * 100),
        "exports": [p.name for p in reports.export_zips(study)],
        "export_runs": reports.export_runs_shown(study),
        "can_build": may_export(model_admin, request, study),
        "arms": list(study.conditions.values_list("key", flat=True)),
    }
    return render_admin_page(
        request,
        "admin/studies/report.html",
        context,
        partial="report-status",
        model_admin=model_admin,
        title=f"Analysis report: {study.title}",
    )


@require_POST
def report_build(request: HttpRequest, study_id: int, *, model_admin) -> HttpResponse:
    """Queue a new report run (export, then statistics) on a worker."""
    study = _study(request, study_id, model_admin)
    arms = set(study.conditions.values_list("key", flat=True))
    reference = request.POST.get("reference_arm", "")
    queue_report(
        request,
        study,
        include_pilot=request.POST.get("include_pilot") == "on",
        reference_arm=reference if reference in arms else "",
    )
    return HttpResponseRedirect(report_url(study))


@require_POST
def report_cancel(request: HttpRequest, study_id: int, run_id: int, *, model_admin) -> HttpResponse:
    """Cancel a queued report at once, or a building one at its next step (its folder goes)."""
    study = _study(request, study_id, model_admin)
    run = get_object_or_404(ReportRun, pk=run_id, study=study)
    try:
        status = jobs.job_cancel(ReportRun, run.pk)
    except jobs.JobStateError as exc:
        messages.error(request, str(exc))
    else:
        done = "cancelled" if status == "cancelled" else "cancelling: it stops at its next step"
        messages.success(request, f"Report {run.pk}: {done}.")
    return HttpResponseRedirect(report_url(study))


@require_POST
def report_retry(request: HttpRequest, study_id: int, run_id: int, *, model_admin) -> HttpResponse:
    """Build an interrupted, cancelled or failed report again, with the same settings."""
    study = _study(request, study_id, model_admin)
    run = get_object_or_404(ReportRun, pk=run_id, study=study)
    try:
        reports.report_run_retry(run_id=run.pk)
    except jobs.JobStateError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Report {run.pk} queued again.")
    return HttpResponseRedirect(report_url(study))


def queue_report(
    request: HttpRequest, study: Study, *, include_pilot: bool = False, reference_arm: str = ""
) -> ReportRun:
    run = reports.report_run_create(
        study_id=study.pk,
        by=request.user.get_username(),
        include_pilot=include_pilot,
        reference_arm=reference_arm,
    )
    reports.report_run_queue(run)
    messages.success(request, f"{study.slug}: report queued; this page shows its progress.")
    return run


def queue_export(request: HttpRequest, study: Study, *, fmt: str = "parquet") -> ReportRun:
    """Queue a background export (pseudonymised ids) as an export run of the study."""
    run = reports.export_run_create(study_id=study.pk, fmt=fmt, by=request.user.get_username())
    return reports.report_run_queue(run)


def _run_file(run: ReportRun, *parts: str) -> Path:
    base = Path(run.out_dir).resolve()
    target = base.joinpath(*parts).resolve()
    if not run.out_dir or not target.is_relative_to(base) or not target.is_file():
        raise Http404("No such file.")
    return target


def _run(request: HttpRequest, study_id: int, run_id: int, model_admin) -> ReportRun:
    study = _study(request, study_id, model_admin)
    return get_object_or_404(ReportRun, pk=run_id, study=study, status=ReportRun.Status.DONE)


@require_GET
@xframe_options_sameorigin
# The generated report is framed (sandboxed, no scripts) by the report page and styles itself.
@csp_replace({"frame-ancestors": ["'self'"]})
@csp_update({"style-src": ["'unsafe-inline'"]})
def report_file(
    request: HttpRequest, study_id: int, run_id: int, name: str, *, model_admin
) -> FileResponse:
    """report.html (framed by the report page), summary.json, notebook.ipynb or export.zip."""
    run = _run(request, study_id, run_id, model_admin)
    if name not in RUN_FILES:
        raise Http404("No such file.")
    relative = ("export.zip",) if name == "export.zip" else ("report", name)
    download = name != "report.html"
    filename = f"{run.study.slug}-{run.pk}-{name}"
    return FileResponse(
        _run_file(run, *relative).open("rb"), as_attachment=download, filename=filename
    )


@require_GET
def export_file(request: HttpRequest, study_id: int, name: str, *, model_admin) -> FileResponse:
    """A zipped export made in the background (an export run, studies.tasks.export_run)."""
    study = _study(request, study_id, model_admin)
    found = {p.name: p for p in reports.export_zips(study)}
    if name not in found:
        raise Http404("No such export.")
    filename = f"{study.slug}-{name}"
    return FileResponse(found[name].open("rb"), as_attachment=True, filename=filename)
