"""Researcher admin: studies with arms and tasks inline; participants with their full transcript."""

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME, ActionForm
from django.db import models
from django.db.models import Count, Q
from django.http import FileResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from studies import admin_reports, tasks
from studies.models import (
    Condition,
    ErasureRecord,
    Event,
    ModelEndpoint,
    Participant,
    Study,
    StudyVersion,
    Task,
)
from studies.services import (
    assignment,
    exclusions,
    lifecycle,
    outcomes,
    reentry,
    reports,
    versions,
)
from studies.services.endpoints import TrafficSummary, endpoint_traffic, endpoints_with_traffic
from studies.services.errors import StudyActionError

# Permission names (Study.Meta.permissions); the researcher groups are made in migration 0006.
RUN_STUDY = "studies.run_study"
VIEW_TRANSCRIPTS = "studies.view_transcripts"
TRANSCRIPT_FIELDS = ("intent", "transcript", "final")
# The link's platform tokens live here, and a token rebinds a browser to the participant
# (studies.services.reentry): shown only to roles that may read what participants wrote.
CREDENTIAL_FIELDS = ("recruiting_params", "attempts")


class ConditionInline(admin.TabularInline):
    model = Condition
    extra = 0
    fields = [
        "key",
        "label",
        "endpoint",
        "model_name",
        "system_prompt",
        "prompt_version",
        "generation_params",
        "weight",
        "cap",
        "cap_per_stratum",
        "is_active",
    ]


class TaskInline(admin.TabularInline):
    model = Task
    extra = 0
    fields = ["document_type", "topic", "brief", "intent_questions"]


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
        "monitor_link",
        "report_link",
    ]
    list_filter = ["status"]
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
                           "instructions"]}),
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
    ]  # fmt: skip

    def get_readonly_fields(self, request, obj=None):
        # Status changes go through the actions (going live publishes the configuration).
        return ["config_version", "status"] if obj is not None else ["config_version"]

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
        problems = assignment.design_problems(study)
        problems += exclusions.rules_problems(study.exclusion_rules or {})
        for problem in problems:
            self.message_user(request, f"Check the design: {problem}", messages.WARNING)

    def _set_status(self, request, queryset, status: str) -> None:
        for study in queryset:
            try:
                lifecycle.study_set_status(
                    study_id=study.pk, status=status, by=request.user.get_username()
                )
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
                _n=Count("participants"),
                _done=Count("participants", filter=Q(participants__status="completed")),
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
            tasks.export_study_task.delay_on_commit(study.pk, "parquet", False)
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
        from studies.admin_monitor import monitor_urls

        return monitor_urls(self) + admin_reports.report_urls(self) + super().get_urls()

    @admin.display(description="participants", ordering="_n")
    def n_participants(self, obj: Study) -> int:
        return obj._n

    @admin.display(description="monitor")
    def monitor_link(self, obj: Study) -> str:
        url = reverse("admin:studies_study_monitor", args=[obj.pk])
        return format_html('<a href="{}">monitor</a>', url)

    @admin.display(description="report")
    def report_link(self, obj: Study) -> str:
        return format_html('<a href="{}">report</a>', admin_reports.report_url(obj))

    @admin.display(description="completed", ordering="_done")
    def n_completed(self, obj: Study) -> int:
        return obj._done


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records nobody edits in the admin: viewable with view permission, never added or deleted."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(StudyVersion)
class StudyVersionAdmin(ReadOnlyAdmin):
    """Frozen configurations; each shows what changed since the one before it."""

    list_display = ["study", "number", "created_at", "created_by", "n_participants"]
    list_filter = ["study"]
    fields = ["study", "number", "created_at", "created_by", "changes", "config"]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_n=Count("participant"))

    @admin.display(description="participants", ordering="_n")
    def n_participants(self, obj: StudyVersion) -> int:
        return obj._n

    @admin.display(description="changes since the previous version")
    def changes(self, obj: StudyVersion) -> str:
        previous = obj.study.versions.filter(number__lt=obj.number).order_by("-number").first()
        rows = versions.version_diff(previous, obj)
        if not rows:
            return "-"
        body = format_html_join(
            "",
            "<tr><th scope='row'><code>{}</code></th><td>{}</td><td>{}</td></tr>",
            ((path, "—" if old is None else old, "—" if new is None else new)
             for path, old, new in rows),
        )  # fmt: skip
        return format_html(
            "<table><caption>v{} → v{}</caption><thead><tr><th scope='col'>setting</th>"
            "<th scope='col'>before</th><th scope='col'>after</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            previous.number if previous else 0,
            obj.number,
            body,
        )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _traffic_cells(summary: TrafficSummary | None) -> tuple[str, ...]:
    if summary is None or not summary.replies:
        return ("0", "-", "-", "-", "-")
    share = summary.failed_share or 0.0
    tps = "-" if summary.tokens_per_second is None else f"{summary.tokens_per_second:.1f}"
    return (
        str(summary.replies),
        f"{share:.0%}",
        _seconds(summary.median_ttft),
        _seconds(summary.median_itl),
        tps,
    )


SERVING_FIELDS = [
    "server", "launch", "replica_urls", "max_concurrent_streams", "connect_timeout", "read_timeout",
]  # fmt: skip


@admin.register(ModelEndpoint)
class ModelEndpointAdmin(admin.ModelAdmin):
    list_display = [
        "name", "server", "base_url", "served_model", "health", "health_checked_at",
        "last_hour",
    ]  # fmt: skip
    list_filter = ["server", "health"]
    readonly_fields = ["health", "health_checked_at", "health_detail_text", "traffic"]
    fieldsets = [
        (None, {"fields": ["name", "base_url", "served_model", "api_key_env"]}),
        ("Serving", {"fields": SERVING_FIELDS}),
        ("Health and traffic", {"fields": readonly_fields}),
    ]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    def get_queryset(self, request):
        return endpoints_with_traffic(super().get_queryset(request))

    @admin.display(description="Last hour: replies, failed, TTFT, ITL, tok/s")
    def last_hour(self, obj: ModelEndpoint) -> str:
        return " · ".join(_traffic_cells(endpoint_traffic(obj, "hour")))

    @admin.display(description="Health detail")
    def health_detail_text(self, obj: ModelEndpoint) -> str:
        lines = obj.health_detail.splitlines() or ["not checked yet"]
        return format_html("<pre>{}</pre>", "\n".join(lines))

    @admin.display(description="Replies (finished)")
    def traffic(self, obj: ModelEndpoint) -> str:
        head = ("window", "replies", "failed or interrupted", "median TTFT", "median ITL", "tok/s")
        rows = [
            (label, *_traffic_cells(endpoint_traffic(obj, window)))
            for window, label in (("hour", "last hour"), ("all", "all time"))
        ]
        return format_html(
            '<table class="endpoint-traffic"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>',
            format_html_join("", "<th>{}</th>", ((h,) for h in head)),
            format_html_join(
                "",
                "<tr>{}</tr>",
                ((format_html_join("", "<td>{}</td>", ((c,) for c in row)),) for row in rows),
            ),
        )


class EventInline(admin.TabularInline):
    model = Event
    extra = 0
    fields = ["created_at", "kind", "details"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="payload")
    def details(self, obj: Event) -> str:
        # Events written before payloads left platform tokens out may still hold one.
        return json.dumps(reentry.without_tokens(obj.payload), ensure_ascii=False, sort_keys=True)


class ReasonActionForm(ActionForm):
    reason = forms.CharField(required=False, label="Reason (for exclusions)")


@admin.register(Participant)
class ParticipantAdmin(admin.ModelAdmin):
    list_display = [
        "external_id",
        "study",
        "condition",
        "status",
        "outcome",
        "document_type",
        "entered_at",
        "active_seconds",
        "excluded_at",
        "is_pilot",
        "is_preview",
    ]
    list_filter = [
        "study",
        "status",
        "outcome",
        "condition__key",
        "is_pilot",
        "is_preview",
        ("excluded_at", admin.EmptyFieldListFilter),
    ]
    action_form = ReasonActionForm
    actions = ["mark_returned", "mark_timed_out", "exclude_with_reason"]
    search_fields = ["external_id", "public_id"]
    list_select_related = ["study", "condition"]
    readonly_fields = [
        "public_id",
        "study",
        "external_id",
        "recruiting_source",
        "recruiting_params",
        "config_version",
        "version",
        "attempts",
        "condition",
        "document_type",
        "task",
        "allocation",
        "outcome",
        "comprehension_failures",
        "attention_failures",
        "excluded_at",
        "exclusion_reason",
        "entered_at",
        "consented_at",
        "briefed_at",
        "chat_started_at",
        "chat_finished_at",
        "completed_at",
        "ended_at",
        "last_active_at",
        "active_seconds",
        "wall_time",
        "intent",
        "transcript",
        "final",
    ]
    # Every change goes through an action (services keep slots, events and outcomes right).
    _at = readonly_fields.index("outcome")
    fields = [*readonly_fields[:_at], "status", "is_pilot", "is_preview", *readonly_fields[_at:]]
    readonly_fields = fields
    inlines = [EventInline]

    def _end(self, request, queryset, outcome: str) -> None:
        done = 0
        for participant in queryset:
            try:
                outcomes.participant_end(
                    participant_id=participant.pk, outcome=outcome, by=request.user.get_username()
                )
                done += 1
            except StudyActionError as exc:
                self.message_user(request, f"{participant}: {exc.message}", messages.WARNING)
        self.message_user(request, f"{done} participant(s) marked {outcome}.")

    @admin.action(
        description="Mark returned (frees the slot where the design says so)",
        permissions=["run"],
    )
    def mark_returned(self, request, queryset) -> None:
        self._end(request, queryset, Participant.Outcome.RETURNED)

    @admin.action(
        description="Mark timed out (frees the slot where the design says so)",
        permissions=["run"],
    )
    def mark_timed_out(self, request, queryset) -> None:
        self._end(request, queryset, Participant.Outcome.TIMED_OUT)

    @admin.action(
        description="Exclude from analyses with the reason given (keeps all data)",
        permissions=["run"],
    )
    def exclude_with_reason(self, request, queryset) -> None:
        reason = request.POST.get("reason", "").strip()
        if not reason:
            self.message_user(request, "Give a reason for the exclusion.", messages.ERROR)
            return
        for participant in queryset:
            outcomes.participant_exclude(
                participant_id=participant.pk, reason=reason, by=request.user.get_username()
            )
        self.message_user(request, f"{queryset.count()} participant(s) excluded: {reason}")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("study", "condition", "task")

    def get_fields(self, request, obj=None):
        # What participants wrote, and what proves who they are, only for transcript readers.
        if request.user.has_perm(VIEW_TRANSCRIPTS):
            return self.fields
        hidden = {*TRANSCRIPT_FIELDS, *CREDENTIAL_FIELDS}
        return [f for f in self.fields if f not in hidden]

    def has_run_permission(self, request) -> bool:
        return request.user.has_perm(RUN_STUDY)

    def has_add_permission(self, request) -> bool:
        return False  # participants enter through the study link

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # erase_participant is the one way, and it records who and why

    @admin.display(description="wall time (s)")
    def wall_time(self, obj: Participant) -> str:
        return f"{obj.wall_seconds:.0f}" if obj.wall_seconds is not None else "-"

    @admin.display(description="intent answers")
    def intent(self, obj: Participant) -> str:
        rows = obj.intent_answers.all()
        return format_html_join(
            "", "<p><b>{}</b><br>{}</p>", ((a.question, a.answer) for a in rows)
        )

    @admin.display(description="transcript (ratings inline)")
    def transcript(self, obj: Participant) -> str:
        ratings = {r.after_turn: r for r in obj.ratings.all()}
        parts = []
        for m in obj.messages.order_by("id"):
            timing = ""
            if m.role == "assistant":
                timing = (
                    f"{m.status}; {m.model}; {m.prompt_ref};"
                    f" ttft {m.time_to_first_token or 0:.2f}s;"
                    f" {m.duration or 0:.1f}s; tokens {m.prompt_tokens}/{m.completion_tokens}"
                )
            parts.append(
                format_html(
                    '<div class="transcript-turn"><b>#{} {}</b> <small>{} {}</small>'
                    "<pre>{}</pre></div>",
                    m.turn_index,
                    m.role,
                    m.created_at.strftime("%H:%M:%S"),
                    timing,
                    m.content,
                )
            )
            rating = (
                ratings.get(m.turn_index)
                if m.role == "assistant" and m.status == "complete"
                else None
            )
            if rating:
                parts.append(
                    format_html(
                        "<p><i>Rating after turn {}: {}/10</i></p>", rating.after_turn, rating.score
                    )
                )
        return format_html_join("", "{}", ((p,) for p in parts))

    @admin.display(description="final survey")
    def final(self, obj: Participant) -> str:
        survey = getattr(obj, "final_survey", None)
        if survey is None:
            return "-"
        return format_html(
            "<p>Document quality {}/10, overall {}/10</p><pre class='wrap'>{}</pre>"
            "<p><b>Strengths</b> {}</p><p><b>Weaknesses</b> {}</p>",
            survey.document_quality,
            survey.overall_interaction,
            survey.document_text,
            survey.strengths,
            survey.weaknesses,
        )


@admin.register(ErasureRecord)
class ErasureRecordAdmin(ReadOnlyAdmin):
    """Erasures made by `manage.py erase_participant`: read-only."""

    list_display = ["created_at", "study_slug", "participant_pseudonym", "requested_by", "reason"]
    list_filter = ["study_slug"]
    fields = ["created_at", *list_display[1:], "erased_rows"]
    readonly_fields = fields
