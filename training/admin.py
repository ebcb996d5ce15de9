"""Training in the admin: configure a run, start it, watch each stage live, cancel it, retry a
failed, cancelled or interrupted stage, and put a trained checkpoint into a study as a new arm.

The loop: "Train from this study" (a study action) makes a draft run on the study's chats; its
checkpoint's "Follow-up study" makes a draft copy of the study with the checkpoint as an arm."""

from functools import partial

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_GET, require_POST

from studies.admin.common import render_admin_page
from studies.admin.study import StudyAdmin
from studies.models import Study
from training.charts import stage_charts
from training.forms import TrainingRunForm
from training.models import Checkpoint, TrainingRun, TrainingStage
from training.services import runs
from training.services.checkpoints import checkpoint_add_to_study
from training.services.followup import followup_study, run_from_study
from training.services.presets import PresetError

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

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).select_related("run__source_study", "endpoint")

    @admin.display(description="Study arm")
    def add_link(self, checkpoint: Checkpoint) -> str:
        url = reverse("admin:training_checkpoint_add_to_study", args=[checkpoint.pk])
        link = format_html('<a href="{}">add to a study</a>', url)
        source = checkpoint.run.source_study
        if source is None:
            return link
        url = reverse("admin:training_checkpoint_followup", args=[checkpoint.pk])
        return format_html('{} | <a href="{}">Follow-up study from {}</a>', link, url, source)

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path(
                "<int:checkpoint_id>/add-to-study/",
                wrap(partial(add_to_study, model_admin=self)),
                name="training_checkpoint_add_to_study",
            ),
            path(
                "<int:checkpoint_id>/followup/",
                wrap(partial(followup, model_admin=self)),
                name="training_checkpoint_followup",
            ),
            *super().get_urls(),
        ]


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


def followup(request: HttpRequest, checkpoint_id: int, *, model_admin) -> HttpResponse:
    """Confirm, then a new draft study: the run's source study copied, the checkpoint an arm."""
    checkpoint = get_object_or_404(Checkpoint.objects.select_related("run"), pk=checkpoint_id)
    source = checkpoint.run.source_study
    if not (
        model_admin.has_view_permission(request, checkpoint)
        and request.user.has_perms([RUN_TRAINING, "studies.add_study", "studies.view_study"])
    ):
        raise PermissionDenied
    if source is None:
        raise Http404("the checkpoint's run was not trained on a study")
    if request.method == "POST":
        try:
            study = followup_study(checkpoint, from_study=source, by=request.user.get_username())
        except runs.RunStateError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(
                request, f"Draft {study.slug} made from {source.slug}: review it, then go live."
            )
            return HttpResponseRedirect(reverse("admin:studies_study_change", args=[study.pk]))
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": f"Follow-up study from {source}",
        "checkpoint": checkpoint,
        "study": source,
    }
    return render(request, "admin/training/followup.html", context)


class StudyTrainingAdmin(StudyAdmin):
    """The study admin with "Train from this study" (the training app adds it: studies never
    imports training)."""

    actions = [*StudyAdmin.actions, "train_from_study"]

    def has_train_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(RUN_TRAINING) and self.has_view_permission(request)

    @admin.action(description="Train from this study", permissions=["train"])
    def train_from_study(self, request: HttpRequest, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Train from one study at a time.", messages.ERROR)
            return None
        study = queryset.get()
        if not self.has_view_permission(request, study):
            raise PermissionDenied
        try:
            run = run_from_study(study=study, by=request.user.get_username())
        except PresetError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return None
        self.message_user(
            request,
            f"Draft run {run} on {study.slug}'s participants who agreed to training use; "
            "check its settings, then press Start.",
        )
        return HttpResponseRedirect(progress_url(run))


admin.site.unregister(Study)
admin.site.register(Study, StudyTrainingAdmin)
