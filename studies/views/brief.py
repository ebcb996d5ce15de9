"""Step 2: the brief, the topic choice (htmx) and the intent questions."""

from django import forms
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_http_methods

from studies import selectors
from studies.forms import FreeTextField
from studies.pages import at_step, moved_on
from studies.services import participants as svc
from studies.services.errors import StudyActionError
from studies.services.versions import frozen_study


class IntentForm(forms.Form):
    def __init__(self, questions: list[str], *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for i, question in enumerate(questions):
            self.fields[f"q{i}"] = FreeTextField(
                label=question,
                max_length=svc.MAX_ANSWER_CHARS,
                widget=forms.Textarea(attrs={"rows": 2}),
            )


@require_http_methods(["GET", "POST"])
def brief(request: HttpRequest, slug: str) -> HttpResponse:
    participant = at_step(request, slug, "brief")
    if isinstance(participant, HttpResponse):
        return participant
    if request.method == "GET" and participant.task is None:
        # A one-item topic list is no choice: take it and go straight to the intent questions.
        try:
            participant = svc.participant_take_only_topic(participant_id=participant.pk)
        except StudyActionError:  # moved on since the step check (e.g. timed out)
            return moved_on(participant.pk)
    error = None
    form = IntentForm(participant.task.intent_questions) if participant.task else None
    if request.method == "POST":
        try:
            if participant.task is None:
                participant = svc.participant_choose_topic(
                    participant_id=participant.pk, task_id=int(request.POST.get("task", "0") or 0)
                )
                form = IntentForm(participant.task.intent_questions)
            else:
                form = IntentForm(participant.task.intent_questions, request.POST)
                if form.is_valid():
                    answers = [form.cleaned_data[f"q{i}"] for i in range(len(form.fields))]
                    svc.participant_submit_intent(participant_id=participant.pk, answers=answers)
                    return redirect("studies:chat", slug)
        except (StudyActionError, ValueError) as exc:
            error = getattr(exc, "message", _("Please choose one of the listed topics."))
    context = {
        "participant": participant,
        "study": frozen_study(participant),
        "topics": selectors.topics_for(participant),
        "form": form,
        "error": error,
    }
    template = "studies/brief.html#brief-step" if request.htmx else "studies/brief.html"
    return render(request, template, context, status=400 if error else 200)
