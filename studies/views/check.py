"""Step 3: the comprehension check (and the multiple-choice form the final survey reuses)."""

from django import forms
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_http_methods

from studies.pages import at_step, moved_on
from studies.services import participants as svc
from studies.services.errors import StudyActionError
from studies.services.participants import COMPREHENSION_ATTEMPTS
from studies.services.versions import frozen_study


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
    participant = at_step(request, slug, "check")
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
            return moved_on(participant.pk)
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
