"""Participant pages: one function view per action; each parses, calls one service, renders."""

from django import forms
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from studies import selectors
from studies.models import Participant
from studies.pages import closed_page, step_url, study_or_404
from studies.services import activity, outcomes
from studies.services import participants as svc
from studies.services.errors import StudyActionError
from studies.services.participants import COMPREHENSION_ATTEMPTS
from studies.services.versions import frozen_study
from studies.sessions import session_participant_id


def _at_step(request: HttpRequest, slug: str, step: str) -> Participant | HttpResponse:
    """The session's participant if this is their step now, else a redirect to where they are."""
    pid = session_participant_id(request.session, slug)
    if pid is None:
        return redirect("studies:entry", slug)
    participant = selectors.participant_for_page(pid)
    if svc.participant_step(participant) != step:
        return redirect(step_url(participant))
    return participant


def _moved_on(participant_id: int) -> HttpResponse:
    """A double click or a stale tab: the step was already taken, so go where they are now."""
    return redirect(step_url(selectors.participant_for_page(participant_id)))


@require_http_methods(["GET", "POST"])
def consent(request: HttpRequest, slug: str) -> HttpResponse:
    participant = _at_step(request, slug, "consent")
    if isinstance(participant, HttpResponse):
        return participant
    if request.method == "POST":
        if request.POST.get("choice") != "agree":
            return closed_page(
                request, participant.study, _("You did not consent; you may close this page.")
            )
        try:
            svc.participant_consent(participant_id=participant.pk)
        except StudyActionError as exc:
            if exc.code == "wrong_step":
                return _moved_on(participant.pk)
            return closed_page(request, participant.study, exc.message)
        return redirect("studies:brief", slug)
    return render(
        request,
        "studies/consent.html",
        {"participant": participant, "study": frozen_study(participant)},
    )


class IntentForm(forms.Form):
    def __init__(self, questions: list[str], *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for i, question in enumerate(questions):
            self.fields[f"q{i}"] = forms.CharField(
                label=question,
                max_length=svc.MAX_ANSWER_CHARS,
                widget=forms.Textarea(attrs={"rows": 2}),
            )


@require_http_methods(["GET", "POST"])
def brief(request: HttpRequest, slug: str) -> HttpResponse:
    participant = _at_step(request, slug, "brief")
    if isinstance(participant, HttpResponse):
        return participant
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


class CheckForm(forms.Form):
    """Multiple-choice questions (comprehension or attention): field qN, value = choice index."""

    def __init__(self, questions: list[dict], *args, prefix_name: str = "q", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.names = [f"{prefix_name}{i}" for i in range(len(questions))]
        for name, question in zip(self.names, questions, strict=True):
            self.fields[name] = forms.TypedChoiceField(
                label=question["question"],
                choices=list(enumerate(question["choices"])),
                coerce=int,
                widget=forms.RadioSelect,
            )

    def answers(self) -> list[int | None]:
        return [self.cleaned_data.get(name) for name in self.names]


@require_http_methods(["GET", "POST"])
def check(request: HttpRequest, slug: str) -> HttpResponse:
    participant = _at_step(request, slug, "check")
    if isinstance(participant, HttpResponse):
        return participant
    questions = frozen_study(participant).comprehension_questions
    form = CheckForm(questions, request.POST or None)
    error = None
    if request.method == "POST":
        answers = form.answers() if form.is_valid() else [None] * len(questions)
        try:
            attempt = int(request.POST.get("attempt", ""))
        except ValueError:
            attempt = None
        try:
            result = svc.participant_check_comprehension(
                participant_id=participant.pk, answers=answers, attempt=attempt
            )
        except StudyActionError:  # a double click or a stale tab: this attempt was already scored
            return _moved_on(participant.pk)
        if result.passed:
            return redirect("studies:chat", slug)
        if result.screened_out:
            return redirect("studies:closed", slug)
        participant.comprehension_failures = COMPREHENSION_ATTEMPTS - result.attempts_left
        error = _(
            "Some answers were not right. Please read the task again; you have one more attempt."
        )
        form = CheckForm(questions)
    context = {"participant": participant, "study": frozen_study(participant), "form": form}
    return render(
        request, "studies/check.html", context | {"error": error}, status=400 if error else 200
    )


def _chat_context(participant: Participant) -> dict:
    return {
        "participant": participant,
        "study": frozen_study(participant),
        "scale": range(1, 11),
        "heartbeat_seconds": settings.HEARTBEAT_SECONDS,
        "max_chars": settings.CHAT_MAX_MESSAGE_CHARS,
    }


@require_GET
def chat(request: HttpRequest, slug: str) -> HttpResponse:
    participant = _at_step(request, slug, "chat")
    if isinstance(participant, HttpResponse):
        return participant
    return render(request, "studies/chat.html", _chat_context(participant))


@require_POST
def finish(request: HttpRequest, slug: str) -> HttpResponse:
    participant = _at_step(request, slug, "chat")
    if isinstance(participant, HttpResponse):
        return participant
    try:
        svc.participant_finish_chat(participant_id=participant.pk)
    except StudyActionError as exc:
        if exc.code == "wrong_step":
            return _moved_on(participant.pk)
        context = _chat_context(participant) | {"error": exc.message}
        return render(request, "studies/chat.html", context, status=400)
    return redirect("studies:final", slug)


class FinalForm(forms.Form):
    document_text = forms.CharField(
        label=_("Your final document"), max_length=svc.MAX_DOCUMENT_CHARS, widget=forms.Textarea
    )
    document_quality = forms.TypedChoiceField(
        label=_("How good is the final document? (1 = very poor, 10 = excellent)"),
        choices=[(i, i) for i in range(1, 11)],
        coerce=int,
        widget=forms.RadioSelect,
    )
    overall_interaction = forms.TypedChoiceField(
        label=_("How was the interaction with the assistant overall? (1-10)"),
        choices=[(i, i) for i in range(1, 11)],
        coerce=int,
        widget=forms.RadioSelect,
    )
    strengths = forms.CharField(
        label=_("What did the assistant do well?"),
        max_length=svc.MAX_ANSWER_CHARS,
        widget=forms.Textarea,
    )
    weaknesses = forms.CharField(
        label=_("What could the assistant do better?"),
        max_length=svc.MAX_ANSWER_CHARS,
        widget=forms.Textarea,
    )


@require_http_methods(["GET", "POST"])
def final(request: HttpRequest, slug: str) -> HttpResponse:
    participant = _at_step(request, slug, "final")
    if isinstance(participant, HttpResponse):
        return participant
    checks = frozen_study(participant).attention_checks
    form = FinalForm(request.POST or None)
    attention = CheckForm(checks, request.POST or None, prefix_name="attention_")
    if request.method == "POST" and form.is_valid() and attention.is_valid():
        try:
            svc.participant_submit_final(
                participant_id=participant.pk,
                answers=svc.FinalAnswers(**form.cleaned_data, attention=tuple(attention.answers())),
            )
        except StudyActionError as exc:
            if exc.code == "wrong_step":
                return _moved_on(participant.pk)
            form.add_error(None, exc.message)
        else:
            return redirect("studies:done", slug)
    status = 400 if request.method == "POST" else 200
    return render(
        request,
        "studies/final.html",
        {
            "participant": participant,
            "study": frozen_study(participant),
            "form": form,
            "attention": attention,
        },
        status=status,
    )


@require_GET
def done(request: HttpRequest, slug: str) -> HttpResponse:
    participant = _at_step(request, slug, "done")
    if isinstance(participant, HttpResponse):
        return participant
    context = {
        "participant": participant,
        "study": frozen_study(participant),
        "code": outcomes.outcome_code(participant),
        "redirect_url": svc.completion_redirect(participant),
    }
    return render(request, "studies/done.html", context)


@require_POST
def alive(request: HttpRequest, slug: str) -> HttpResponse:
    """A participant page's heartbeat: keeps a participant who is reading or writing from being
    marked abandoned or timed out. Nothing to return; 204 also when the session has no one."""
    pid = session_participant_id(request.session, slug, statuses=outcomes.IN_PROGRESS)
    if pid is not None:
        signal = "idle" if request.POST.get("signal") == "idle" else "active"
        activity.activity_record(participant_id=pid, signal=signal, payload={"page": True})
    return HttpResponse(status=204)


ENDED_MESSAGES = {
    Participant.Outcome.SCREENED_OUT: _(
        "Thank you. Your answers to the check did not match the task, so this study ends here."
    ),
    Participant.Outcome.TIMED_OUT: _("The time for this study has run out. Thank you."),
    Participant.Outcome.RETURNED: _("You returned this study. Thank you for your interest."),
    Participant.Outcome.ABANDONED: _(
        "This session ended after a long time without activity. Thank you."
    ),
}


@require_GET
def closed(request: HttpRequest, slug: str) -> HttpResponse:
    study = study_or_404(slug)
    pid = session_participant_id(request.session, slug)
    participant = selectors.participant_for_page(pid) if pid is not None else None
    if participant is None or participant.outcome not in ENDED_MESSAGES:
        return closed_page(
            request, study, _("Your participation in this study has ended. Thank you.")
        )
    context = {
        "participant": participant,
        "study": study,
        "message": ENDED_MESSAGES[participant.outcome],
        "code": outcomes.outcome_code(participant),
        "redirect_url": svc.completion_redirect(participant),
    }
    return render(request, "studies/done.html", context)
