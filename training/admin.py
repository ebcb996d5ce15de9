"""Training in the admin: configure a run, start it, watch each stage live, cancel it, retry a
failed, cancelled or interrupted stage, and put a trained checkpoint into a study as a new arm."""

from functools import partial

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_GET, require_POST

from studies.admin.common import render_admin_page
from studies.models import Study
from training.charts import stage_charts
from training.forms import TrainingRunForm
from training.models import Checkpoint, TrainingRun, TrainingStage
from training.services import runs
from training.services.checkpoints import checkpoint_add_to_study

RUN_TRAINING = "training.run_training"
RETRYABLE = (
    TrainingStage.Status.FAILED,
    TrainingStage.Status.CANCELLED,
    TrainingStage.Status.INTERRUPTED,
)


def progress_url(run: TrainingRun) -> str:
    return reverse("admin:training_trainingrun_progress", args=[run.pk])


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ["name", "status", "task_set", "created_by", "created_at", "progress_link"]
    list_filter = ["status", "task_set"]
    form = TrainingRunForm
    readonly_fields = ["status", "created_by", "created_at", "finished_at"]
    actions = ["start_runs"]
    fieldsets = [
        (None, {"fields": ["name", "base_model", "task_set", "task_limit", "output_dir"]}),
        ("Source study", {"fields": ["source_study", "source_include_pilot"]}),
        (
            "Endpoints",
            {
                "fields": [
                    "policy_endpoint",
                    "user_endpoint",
                    "judge_endpoint",
                    "extractor_endpoint",
                    "json_mode",
                ]
            },
        ),
        (
            "Forward sampling and reward",
            {
                "fields": [
                    "window",
                    "samples",
                    "candidates",
                    "max_turns",
                    "max_tokens",
                    "token_lambda",
                    "token_clamp",
                    "token_scope",
                ]
            },
        ),
        (
            "Stages",
            {
                "fields": [
                    "sft",
                    "dpo",
                    "online_dpo",
                    ("per_device_batch_size", "max_length"),
                    "eval_tasks",
                ]
            },
        ),
        ("Status", {"fields": ["status", "created_by", "created_at", "finished_at"]}),
    ]

    @admin.display(description="Progress")
    def progress_link(self, run: TrainingRun) -> str:
        return format_html('<a href="{}">progress</a>', progress_url(run))

    def save_model(self, request, obj, form, change) -> None:
        obj.created_by = obj.created_by or request.user.get_username()
        super().save_model(request, obj, form, change)

    def has_run_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(RUN_TRAINING)

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        # A run that never started; its stages and checkpoints are PROTECTed records.
        return (
            obj is not None
            and not obj.stage_rows.exists()
            and not obj.checkpoints.exists()
            and super().has_delete_permission(request, obj)
        )

    @admin.action(description="Start the selected runs", permissions=["run"])
    def start_runs(self, request: HttpRequest, queryset) -> None:
        for run in queryset:
            self._start(request, run)

    def _start(self, request: HttpRequest, run: TrainingRun) -> None:
        try:
            runs.run_start(run_id=run.pk, by=request.user.get_username())
        except runs.RunStateError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"{run} started: its stages are queued.")

    def get_urls(self):
        wrap = self.admin_site.admin_view
        views = [
            ("<int:run_id>/progress/", progress_page, "progress"),
            ("<int:run_id>/start/", start_run, "start"),
            ("<int:run_id>/cancel/", cancel_run, "cancel"),
            ("stage/<int:stage_id>/retry/", retry_stage, "retry"),
        ]
        return [
            path(route, wrap(partial(view, model_admin=self)), name=f"training_trainingrun_{n}")
            for route, view, n in views
        ] + super().get_urls()


def _run(request: HttpRequest, run_id: int, model_admin, *, start: bool) -> TrainingRun:
    """The run, if the user may view it and (to start or retry) run training."""
    run = get_object_or_404(TrainingRun, pk=run_id)
    allowed = model_admin.has_view_permission(request, run) and (
        not start or model_admin.has_run_permission(request)
    )
    if not allowed:
        raise PermissionDenied
    return run


def _stage_rows(run: TrainingRun) -> list[dict]:
    rows = []
    for stage in run.stage_rows.order_by("position"):
        per_minute, left = runs.stage_rate(stage)
        percent = round(100 * stage.done / stage.total) if stage.total else 0
        rows.append(
            {
                "stage": stage,
                "percent": percent,
                "per_minute": per_minute,
                "left": left,
                "charts": stage_charts(stage.curve),
            }
        )
    return rows


@require_GET
def progress_page(request: HttpRequest, run_id: int, *, model_admin) -> HttpResponse:
    """Every stage's status, progress, rate, ETA and log; polled while the run is running."""
    run = _run(request, run_id, model_admin, start=False)
    context = {
        "run": run,
        "rows": _stage_rows(run),
        "polling": run.status == TrainingRun.Status.RUNNING,
        "poll_url": progress_url(run),
        "checkpoints": list(run.checkpoints.select_related("endpoint")),
        "can_change": model_admin.has_run_permission(request),
        "retryable": RETRYABLE,
    }
    return render_admin_page(
        request,
        "admin/training/progress.html",
        context,
        partial="training-progress",
        model_admin=model_admin,
        title=f"Training run: {run.name}",
    )


@require_POST
def start_run(request: HttpRequest, run_id: int, *, model_admin) -> HttpResponse:
    run = _run(request, run_id, model_admin, start=True)
    model_admin._start(request, run)
    return HttpResponseRedirect(progress_url(run))


@require_POST
def cancel_run(request: HttpRequest, run_id: int, *, model_admin) -> HttpResponse:
    """Cancel a running run: a queued stage at once, a running one at its next progress step."""
    run = _run(request, run_id, model_admin, start=True)
    try:
        runs.run_cancel(run_id=run.pk)
    except runs.RunStateError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{run}: cancelling; what its stages wrote is kept.")
    return HttpResponseRedirect(progress_url(run))


@require_POST
def retry_stage(request: HttpRequest, stage_id: int, *, model_admin) -> HttpResponse:
    stage = get_object_or_404(TrainingStage.objects.select_related("run"), pk=stage_id)
    _run(request, stage.run_id, model_admin, start=True)
    try:
        runs.stage_retry(stage_id=stage.pk)
    except runs.RunStateError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{stage.name} queued again; it resumes from what it wrote.")
    return HttpResponseRedirect(progress_url(stage.run))


class AddToStudyForm(forms.Form):
    study = forms.ModelChoiceField(
        queryset=Study.objects.exclude(status=Study.Status.LIVE).order_by("title"),
        help_text="Draft, paused or closed studies (pause a live study first).",
    )


@admin.register(Checkpoint)
class CheckpointAdmin(admin.ModelAdmin):
    list_display = ["adapter_name", "run", "stage", "endpoint", "created_at", "add_link"]
    readonly_fields = [
        "run",
        "stage",
        "adapter_path",
        "adapter_name",
        "endpoint",
        "benchmark",
        "created_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # checkpoints come from runs

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # a trained adapter's record stays, like the run that made it

    @admin.display(description="Study arm")
    def add_link(self, checkpoint: Checkpoint) -> str:
        url = reverse("admin:training_checkpoint_add_to_study", args=[checkpoint.pk])
        return format_html('<a href="{}">add to a study</a>', url)

    def get_urls(self):
        view = self.admin_site.admin_view(partial(add_to_study, model_admin=self))
        route = path(
            "<int:checkpoint_id>/add-to-study/", view, name="training_checkpoint_add_to_study"
        )
        return [route, *super().get_urls()]


def add_to_study(request: HttpRequest, checkpoint_id: int, *, model_admin) -> HttpResponse:
    """Pick a study; the checkpoint becomes its arm (a new study version is published)."""
    checkpoint = get_object_or_404(Checkpoint, pk=checkpoint_id)
    # A new arm is a configuration change, so it needs both the training and the study side.
    if not (
        model_admin.has_view_permission(request, checkpoint)
        and request.user.has_perms([RUN_TRAINING, "studies.change_study"])
    ):
        raise PermissionDenied
    form = AddToStudyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        study = form.cleaned_data["study"]
        try:
            condition = checkpoint_add_to_study(
                checkpoint=checkpoint, study=study, by=request.user.get_username()
            )
        except runs.RunStateError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"Arm {condition.key} added to {study}; version published.")
            return HttpResponseRedirect(reverse("admin:studies_study_change", args=[study.pk]))
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": f"Add {checkpoint.adapter_name} to a study",
        "form": form,
        "checkpoint": checkpoint,
    }
    return render(request, "admin/training/add_to_study.html", context)
