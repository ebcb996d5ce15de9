"""Studies, with their arms and tasks inline, the setup checks and the go-live, pause and close
actions; the monitor and report pages hang off its URLs."""

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import models
from django.db.models import Count, Q
from django.http import FileResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from studies.admin import reports as admin_reports
from studies.admin.common import (
    RUN_STUDY,
)
from studies.admin.setup_forms import (
    ConditionForm,
    ConditionFormSet,
    StudyForm,
    TaskForm,
    available_prompts_html,
    prompt_preview_html,
)
from studies.models import (
    Condition,
    Study,
    Task,
)
from studies.services import (
    exclusions,
    lifecycle,
    reports,
    setup,
    versions,
)
from studies.services.errors import StudyActionError

# The study list's counts: real participants are data; pilots and previews are counted apart.
REAL = Q(participants__is_pilot=False, participants__is_preview=False)


class ConditionInline(admin.StackedInline):
    model = Condition
    form = ConditionForm
    formset = ConditionFormSet
    extra = 0
    classes = ["setup-inline"]
    fields = [
        ("key", "label", "is_active", "allow_continue"),
        ("endpoint", "model_name"),
        ("system_prompt", "prompt_version"),
        "prompt_preview",
        "generation_params",
        ("weight", "cap", "cap_per_stratum"),
    ]
    readonly_fields = ["prompt_preview"]

    @admin.display(description="Prompt text")
    def prompt_preview(self, obj: Condition | None) -> str:
        return prompt_preview_html(obj)


class TaskInline(admin.StackedInline):
    model = Task
    form = TaskForm
    extra = 0
    classes = ["setup-inline"]
    fields = [("document_type", "topic"), "brief", "intent_questions"]


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = [
        "slug",
        "title",
        "status",
        "min_turns",
        "rating_every",
        "n_participants",
        "n_completed",
        "n_pilot",
        "n_preview",
        "monitor_link",
        "report_link",
    ]
    list_filter = ["status"]
    form = StudyForm

    class Media:
        css = {"all": ["css/setup.css"]}

    prepopulated_fields = {"slug": ["title"]}
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    inlines = [ConditionInline, TaskInline]
    actions = [
        "go_live",
        "pause",
        "resume",
        "close",
        "apply_exclusion_rules",
        "export_data",
        "export_in_background",
        "build_report",
    ]
    filter_horizontal = ["linked_studies"]
    fieldsets = [
        (None, {"fields": ["slug", "title", "status", "config_version", "consent_text",
                           "asks_training_consent", "asks_sharing_consent", "instructions"]}),
        ("Chat", {"fields": ["min_turns", "max_turns", "rating_every", "time_limit_minutes",
                             "time_warning_minutes", "min_user_message_chars", "detect_paste"]}),
        ("Assignment", {"fields": ["design", "block_size", "block_sizes", "stratify_by",
                                   "reuse_slots", "target_per_arm", "seed"]}),
        ("Recruiting", {"fields": ["recruiting_source", "completion_redirect_url",
                                   "completion_code", "screened_out_code",
                                   "attention_failed_code", "timed_out_code", "declined_code",
                                   "linked_studies"]}),
        ("Quality", {"fields": ["comprehension_questions", "attention_checks",
                                "attention_fail_threshold", "exclusion_rules",
                                "abandon_after_minutes"]}),
        ("System prompts the arms can use", {"fields": ["available_prompts"]}),
    ]  # fmt: skip

    def get_readonly_fields(self, request, obj=None):
        # Status changes go through the actions (going live checks the whole study and publishes
        # the configuration); a new study is a draft.
        return ["config_version", "status", "available_prompts"]

    @admin.display(description="Prompts")
    def available_prompts(self, obj: Study | None) -> str:
        return available_prompts_html()

    def save_related(self, request, form, formsets, change) -> None:
        super().save_related(request, form, formsets, change)
        study = form.instance
        before = study.config_version
        version = versions.version_publish(study, by=request.user.get_username())
        if change and version.number != before:
            self.message_user(
                request,
                f"Saved as configuration version {version.number}; participants who entered "
                f"earlier keep version {before}.",
                messages.INFO,
            )
        for problem in setup.study_problems(study):
            self.message_user(request, f"Before going live: {problem}", messages.WARNING)

    def _set_status(self, request, queryset, status: str) -> None:
        for study in queryset:
            try:
                lifecycle.study_set_status(
                    study_id=study.pk, status=status, by=request.user.get_username()
                )
            except lifecycle.StudyNotReady as exc:
                n = len(exc.problems)
                self.message_user(
                    request, f"{study.slug}: A study needs {n} fix(es) to go live:", messages.ERROR
                )
                for problem in exc.problems:
                    self.message_user(request, f"{study.slug}: {problem}", messages.ERROR)
            except StudyActionError as exc:
                self.message_user(request, f"{study.slug}: {exc.message}", messages.ERROR)
            else:
                self.message_user(request, f"{study.slug} is now {status}.", messages.SUCCESS)

    @admin.action(description="Go live (publishes the configuration)", permissions=["run"])
    def go_live(self, request, queryset) -> None:
        self._set_status(request, queryset.exclude(status=Study.Status.PAUSED), "live")

    @admin.action(description="Pause (no new participants)", permissions=["run"])
    def pause(self, request, queryset) -> None:
        self._set_status(request, queryset, "paused")

    @admin.action(description="Resume", permissions=["run"])
    def resume(self, request, queryset) -> None:
        self._set_status(request, queryset.filter(status=Study.Status.PAUSED), "live")

    @admin.action(description="Close", permissions=["run"])
    def close(self, request, queryset) -> None:
        self._set_status(request, queryset, "closed")

    @admin.action(
        description="Apply exclusion rules to completed participants",
        permissions=["run"],
    )
    def apply_exclusion_rules(self, request, queryset) -> None:
        for study in queryset:
            try:
                marked = exclusions.exclusions_apply(
                    study_id=study.pk, by=request.user.get_username()
                )
            except ValueError as exc:
                self.message_user(request, f"{study.slug}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"{study.slug}: {len(marked)} participant(s) excluded.")

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                _n=Count("participants", filter=REAL),
                _done=Count("participants", filter=REAL & Q(participants__status="completed")),
                _pilot=Count("participants", filter=Q(participants__is_pilot=True)),
                _preview=Count(
                    "participants",
                    filter=Q(participants__is_preview=True, participants__is_pilot=False),
                ),
            )
        )

    def has_export_permission(self, request) -> bool:
        return admin_reports.may_export(self, request)

    def has_run_permission(self, request) -> bool:
        return request.user.has_perm(RUN_STUDY)

    def has_delete_permission(self, request, obj=None) -> bool:
        # Only a draft nobody entered; never in bulk (participants' studies are PROTECTed too).
        return (
            obj is not None
            and obj.status == Study.Status.DRAFT
            and not obj.participants.exists()
            and super().has_delete_permission(request, obj)
        )

    @admin.action(description="Export data (download a zip; small studies)", permissions=["export"])
    def export_data(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Export one study at a time.", messages.ERROR)
            return None
        study = queryset.get()
        form = admin_reports.ExportForm(request.POST if "export" in request.POST else None)
        if not form.is_valid():
            context = {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "title": f"Export {study.title}",
                "study": study,
                "form": form,
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
            }
            return TemplateResponse(request, "admin/studies/export_confirm.html", context)
        data = form.cleaned_data
        spool = reports.export_to_temporary_zip(
            study, fmt=data["fmt"], include_pilot=data["include_pilot"], raw_ids=data["raw_ids"]
        )
        name = f"{study.slug}-export{'-raw-ids' if data['raw_ids'] else ''}.zip"
        return FileResponse(spool, as_attachment=True, filename=name)

    @admin.action(
        description="Export data in the background (large studies; pseudonymised ids)",
        permissions=["export"],
    )
    def export_in_background(self, request, queryset) -> None:
        for study in queryset:
            admin_reports.queue_export(request, study)
            self.message_user(
                request,
                format_html(
                    '{}: export queued; the zip appears on the <a href="{}">report page</a>.',
                    study.slug,
                    admin_reports.report_url(study),
                ),
            )

    @admin.action(description="Build analysis report", permissions=["export"])
    def build_report(self, request, queryset) -> None:
        for study in queryset:
            admin_reports.queue_report(request, study)

    def get_urls(self):
        from studies.admin.monitor import monitor_urls

        return monitor_urls(self) + admin_reports.report_urls(self) + super().get_urls()

    @admin.display(description="participants (real)", ordering="_n")
    def n_participants(self, obj: Study) -> int:
        return obj._n

    @admin.display(description="monitor")
    def monitor_link(self, obj: Study) -> str:
        url = reverse("admin:studies_study_monitor", args=[obj.pk])
        return format_html('<a href="{}">monitor</a>', url)

    @admin.display(description="report")
    def report_link(self, obj: Study) -> str:
        return format_html('<a href="{}">report</a>', admin_reports.report_url(obj))

    @admin.display(description="completed (real)", ordering="_done")
    def n_completed(self, obj: Study) -> int:
        return obj._done

    @admin.display(description="pilot", ordering="_pilot")
    def n_pilot(self, obj: Study) -> int:
        return obj._pilot

    @admin.display(description="preview", ordering="_preview")
    def n_preview(self, obj: Study) -> int:
        return obj._preview
