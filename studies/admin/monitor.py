"""The live monitor in the admin: a page, its polled partial, pause/resume/close and pilot runs."""

from functools import partial

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_POST

from studies import monitor
from studies.admin.common import render_admin_page
from studies.admin.pilots import pilot_context, pilot_urls, queue_pilot
from studies.models import Study
from studies.services.access import access_link
from studies.services.errors import StudyActionError
from studies.services.lifecycle import study_set_status

ACTIONS = {"paused": "paused", "live": "resumed", "closed": "closed"}


class PilotForm(forms.Form):
    participants = forms.IntegerField(min_value=1, max_value=200, initial=10)
    concurrency = forms.IntegerField(min_value=1, max_value=50, initial=5)


def monitor_urls(model_admin) -> list:
    """URL patterns under /admin/studies/study/<id>/monitor/, each behind the admin's login."""
    wrap = model_admin.admin_site.admin_view
    name = f"{model_admin.opts.app_label}_{model_admin.opts.model_name}_monitor"
    return [
        path(
            "<int:study_id>/monitor/",
            wrap(partial(monitor_page, model_admin=model_admin)),
            name=name,
        ),
        path(
            "<int:study_id>/monitor/status/",
            wrap(partial(monitor_status, model_admin=model_admin)),
            name=f"{name}_status",
        ),
        path(
            "<int:study_id>/monitor/pilot/",
            wrap(partial(monitor_pilot, model_admin=model_admin)),
            name=f"{name}_pilot",
        ),
        *pilot_urls(model_admin, _study),
    ]


def _study(request: HttpRequest, study_id: int, model_admin, *, run: bool) -> Study:
    """The study, if the user may view it and (for the controls) run it."""
    study = get_object_or_404(Study, pk=study_id)
    allowed = model_admin.has_view_permission(request, study) and (
        not run or model_admin.has_run_permission(request)
    )
    if not allowed:
        raise PermissionDenied
    return study


def _monitor_url(study: Study, population: str = "real") -> str:
    url = reverse("admin:studies_study_monitor", args=[study.pk])
    return url if population == "real" else f"{url}?who={population}"


@require_GET
def monitor_page(request: HttpRequest, study_id: int, *, model_admin) -> HttpResponse:
    """The monitor page; an HTMX poll gets just the live partial."""
    study = _study(request, study_id, model_admin, run=False)
    snapshot = monitor.monitor_snapshot(study, population=request.GET.get("who", "real"))
    context = {
        "snap": snapshot,
        "study": study,
        "poll_url": _monitor_url(study, snapshot.population),
        "can_change": model_admin.has_run_permission(request),
        "population_links": [(p, _monitor_url(study, p)) for p in monitor.POPULATIONS],
    }
    return render_admin_page(
        request,
        "admin/studies/monitor.html",
        context,
        partial="monitor-live",
        model_admin=model_admin,
        title=f"Monitor: {study.title}",
        page_context=lambda: {
            "preview_link": request.build_absolute_uri(access_link(study, "preview")),
            # A pilot link makes pilot participants, which only roles that run a study may do.
            "pilot_link": (
                request.build_absolute_uri(access_link(study, "pilot"))
                if context["can_change"]
                else ""
            ),
            "pilot_form": PilotForm(),
            **pilot_context(study, can_change=context["can_change"]),
        },
    )


@require_POST
def monitor_status(request: HttpRequest, study_id: int, *, model_admin) -> HttpResponse:
    """Pause, resume or close the study from the monitor."""
    study = _study(request, study_id, model_admin, run=True)
    status = request.POST.get("status", "")
    if status not in ACTIONS:
        messages.error(request, "Unknown action.")
    else:
        try:
            study_set_status(study_id=study.pk, status=status, by=request.user.get_username())
        except StudyActionError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"The study is {ACTIONS[status]}.")
    return HttpResponseRedirect(_monitor_url(study))


@require_POST
def monitor_pilot(request: HttpRequest, study_id: int, *, model_admin) -> HttpResponse:
    """Enqueue a pilot run of simulated participants."""
    study = _study(request, study_id, model_admin, run=True)
    form = PilotForm(request.POST)
    if not form.is_valid():
        errors = "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items())
        messages.error(request, f"Pilot not started ({errors}).")
        return HttpResponseRedirect(_monitor_url(study))
    queue_pilot(request, study, **form.cleaned_data)
    messages.success(
        request,
        "Pilot queued: {participants} simulated participants, {concurrency} at a time; "
        "its progress shows below.".format(**form.cleaned_data),
    )
    return HttpResponseRedirect(_monitor_url(study, "pilot"))
