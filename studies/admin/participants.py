"""Participants: their transcript, intent answers and final survey for roles that may read them,
their event log, and the exclusion and erasure actions."""

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.template.loader import render_to_string
from django.utils.html import format_html, format_html_join

from studies.admin.common import (
    CREDENTIAL_FIELDS,
    RUN_STUDY,
    TRANSCRIPT_FIELDS,
    VIEW_TRANSCRIPTS,
)
from studies.models import (
    Event,
    Participant,
)
from studies.numbers import duration_text
from studies.services import (
    outcomes,
    reentry,
)
from studies.services.errors import StudyActionError


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
        "active_time",
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
        "active_time",
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

    @admin.display(description="active time", ordering="active_seconds")
    def active_time(self, obj: Participant) -> str:
        return duration_text(obj.active_seconds)

    @admin.display(description="wall time")
    def wall_time(self, obj: Participant) -> str:
        return duration_text(obj.wall_seconds)

    @admin.display(description="intent answers")
    def intent(self, obj: Participant) -> str:
        rows = obj.intent_answers.all()
        return format_html_join(
            "", "<p><b>{}</b><br>{}</p>", ((a.question, a.answer) for a in rows)
        )

    @admin.display(description="transcript (ratings inline)")
    def transcript(self, obj: Participant) -> str:
        ratings = {r.after_turn: r for r in obj.ratings.all()}
        turns = [
            {
                "message": m,
                "ttft": m.time_to_first_token or 0,
                "duration": m.duration or 0,
                # A rating follows the turn's first complete reply, not a continuation of it.
                "rating": ratings.get(m.turn_index)
                if m.role == "assistant" and m.status == "complete" and not m.continuation_of_id
                else None,
            }
            for m in obj.messages.order_by("id")
        ]
        return render_to_string("admin/studies/participant/transcript.html", {"turns": turns})

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
