"""Pilot runs in the monitor: start one, watch "x of N done, errors so far" (polled), cancel it,
retry an interrupted one, and read its report as tables."""

from functools import partial

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_POST

from studies.models import PilotRun, Study
from studies.pilot.runs import latest_pilot_run, pilot_run_create, pilot_run_queue, pilot_run_retry
from studies.services import jobs

ACTIVE = (PilotRun.Status.QUEUED, PilotRun.Status.RUNNING)


def pilot_urls(model_admin, study_of) -> list:
    """URL patterns under /admin/studies/study/<id>/monitor/pilot/..., behind the admin login."""
    wrap = model_admin.admin_site.admin_view
    name = f"{model_admin.opts.app_label}_{model_admin.opts.model_name}_pilot"
    views = [
        ("<int:study_id>/monitor/pilot/run/", pilot_status, f"{name}_status"),
        ("<int:study_id>/monitor/pilot/<int:run_id>/cancel/", pilot_cancel, f"{name}_cancel"),
        ("<int:study_id>/monitor/pilot/<int:run_id>/retry/", pilot_retry, f"{name}_retry"),
    ]
    return [
        path(route, wrap(partial(view, model_admin=model_admin, study_of=study_of)), name=n)
        for route, view, n in views
    ]


def pilot_context(study: Study, *, can_change: bool) -> dict:
    """The latest pilot run, its share done and its report's tables, for the pilot partial."""
    run = latest_pilot_run(study)
    report = (run.report if run else None) or {}
    return {
        "study": study,
        "pilot": run,
        "pilot_percent": round(100 * run.done / run.participants) if run else 0,
        "pilot_polling": run is not None and run.status in ACTIVE,
        "pilot_poll_url": reverse("admin:studies_study_pilot_status", args=[study.pk]),
        "pilot_report": report,
        "pilot_errors": [
            (step, count, report.get("error_messages", {}).get(step, []))
            for step, count in report.get("errors", {}).items()
        ],
        "can_change": can_change,
    }


def queue_pilot(request: HttpRequest, study: Study, *, participants: int, concurrency: int) -> None:
    """Create the pilot's row and send its task on commit."""
    run = pilot_run_create(
        study_id=study.pk,
        participants=participants,
        concurrency=concurrency,
        by=request.user.get_username(),
    )
    pilot_run_queue(run)


@require_GET
def pilot_status(request: HttpRequest, study_id: int, *, model_admin, study_of) -> HttpResponse:
    """The pilot partial: progress while it runs, then its report (polled by htmx)."""
    study = study_of(request, study_id, model_admin, run=False)
    context = pilot_context(study, can_change=model_admin.has_run_permission(request))
    return render(request, "admin/studies/monitor_pilot_run.html#pilot-run", context)


def _back(study: Study) -> HttpResponseRedirect:
    return HttpResponseRedirect(
        reverse("admin:studies_study_monitor", args=[study.pk]) + "?who=pilot"
    )


@require_POST
def pilot_cancel(
    request: HttpRequest, study_id: int, run_id: int, *, model_admin, study_of
) -> HttpResponse:
    """Stop a pilot: no new simulated participant starts; those under way finish."""
    study = study_of(request, study_id, model_admin, run=True)
    run = get_object_or_404(PilotRun, pk=run_id, study=study)
    try:
        status = jobs.job_cancel(PilotRun, run.pk)
    except jobs.JobStateError as exc:
        messages.error(request, str(exc))
    else:
        done = "cancelled" if status == "cancelled" else "stopping after the participants under way"
        messages.success(request, f"Pilot {run.pk}: {done}.")
    return _back(study)


@require_POST
def pilot_retry(
    request: HttpRequest, study_id: int, run_id: int, *, model_admin, study_of
) -> HttpResponse:
    """Run an interrupted, cancelled or failed pilot again with the same size."""
    study = study_of(request, study_id, model_admin, run=True)
    run = get_object_or_404(PilotRun, pk=run_id, study=study)
    try:
        pilot_run_retry(run_id=run.pk)
    except jobs.JobStateError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Pilot {run.pk} queued again.")
    return _back(study)
