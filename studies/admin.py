"""Researcher admin: studies with arms and tasks inline; participants with their full transcript."""

from django.contrib import admin
from django.db import models
from django.db.models import Count, Q
from django.utils.html import format_html, format_html_join

from studies.models import Condition, Event, ModelEndpoint, Participant, Study, Task


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
    ]
    list_filter = ["status"]
    prepopulated_fields = {"slug": ["title"]}
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    inlines = [ConditionInline, TaskInline]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                _n=Count("participants"),
                _done=Count("participants", filter=Q(participants__status="completed")),
            )
        )

    def get_urls(self):
        from studies.admin_monitor import monitor_urls

        return monitor_urls(self) + super().get_urls()

    @admin.display(description="participants", ordering="_n")
    def n_participants(self, obj: Study) -> int:
        return obj._n

    @admin.display(description="completed", ordering="_done")
    def n_completed(self, obj: Study) -> int:
        return obj._done


@admin.register(ModelEndpoint)
class ModelEndpointAdmin(admin.ModelAdmin):
    list_display = ["name", "base_url", "served_model", "health", "health_checked_at"]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}


class EventInline(admin.TabularInline):
    model = Event
    extra = 0
    fields = ["created_at", "kind", "payload"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Participant)
class ParticipantAdmin(admin.ModelAdmin):
    list_display = [
        "external_id",
        "study",
        "condition",
        "status",
        "document_type",
        "entered_at",
        "active_seconds",
        "is_pilot",
    ]
    list_filter = ["study", "status", "condition__key", "is_pilot"]
    search_fields = ["external_id", "public_id"]
    list_select_related = ["study", "condition"]
    readonly_fields = [
        "public_id",
        "study",
        "external_id",
        "recruiting_source",
        "recruiting_params",
        "config_version",
        "condition",
        "document_type",
        "task",
        "allocation",
        "entered_at",
        "consented_at",
        "briefed_at",
        "chat_started_at",
        "chat_finished_at",
        "completed_at",
        "last_active_at",
        "active_seconds",
        "wall_time",
        "intent",
        "transcript",
        "final",
    ]
    fields = [*readonly_fields[:20], "status", "is_pilot", *readonly_fields[20:]]
    inlines = [EventInline]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("study", "condition", "task")

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
                    '<div style="margin:.4em 0"><b>#{} {}</b> <small>{} {}</small>'
                    '<pre style="white-space:pre-wrap">{}</pre></div>',
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
            "<p>Document quality {}/10, overall {}/10</p><pre style='white-space:pre-wrap'>{}</pre>"
            "<p><b>Strengths</b> {}</p><p><b>Weaknesses</b> {}</p>",
            survey.document_quality,
            survey.overall_interaction,
            survey.document_text,
            survey.strengths,
            survey.weaknesses,
        )
