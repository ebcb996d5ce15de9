"""Step 5: the final survey (document, ratings, attention checks)."""

from django import forms
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_http_methods

from studies import selectors
from studies.forms import FreeTextField
from studies.pages import at_step, moved_on
from studies.services import documents
from studies.services import participants as svc
from studies.services.errors import StudyActionError
from studies.services.versions import frozen_study
from studies.views.check import CheckForm


class FinalForm(forms.Form):
    # Rendered by studies/_document_pane.html (autosaved like the pane beside the chat).
    document_text = FreeTextField(label=_("Your final document"), max_length=svc.MAX_DOCUMENT_CHARS)
    # The version the page's document was edited from (document.js keeps it current).
    document_version = forms.IntegerField(min_value=0, required=False, widget=forms.HiddenInput)
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
    strengths = FreeTextField(
        label=_("What did the assistant do well?"),
        max_length=svc.MAX_ANSWER_CHARS,
        widget=forms.Textarea,
    )
    weaknesses = FreeTextField(
        label=_("What could the assistant do better?"),
        max_length=svc.MAX_ANSWER_CHARS,
        widget=forms.Textarea,
    )


@require_http_methods(["GET", "POST"])
def final(request: HttpRequest, slug: str) -> HttpResponse:
    participant = at_step(request, slug, "final")
    if isinstance(participant, HttpResponse):
        return participant
    checks = frozen_study(participant).attention_checks
    latest = documents.document_latest(participant)
    form = FinalForm(request.POST or None, initial={"document_text": latest.text if latest else ""})
    attention = CheckForm(checks, request.POST or None, prefix_name="attention_")
    newer = base = None
    if request.method == "POST" and form.is_valid() and attention.is_valid():
        answers = dict(form.cleaned_data)
        base = answers.pop("document_version")
        try:
            svc.participant_submit_final(
                participant_id=participant.pk,
                answers=svc.FinalAnswers(**answers, attention=tuple(attention.answers())),
                document_version=base,
            )
        except documents.DocumentStale as exc:
            newer, latest = exc, documents.document_latest(participant)
            form.add_error(None, exc.message)
        except StudyActionError as exc:
            if exc.code == "wrong_step":
                return moved_on(participant.pk)
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
            "document": latest,
            "document_text": form["document_text"].value() or "",
            # After a refused stale submission: the page stays on its own base, the newer text
            # offered (the conflict notice), and the hidden field on the newer version.
            "document_base": base if newer else (latest.number if latest else 0),
            "newer": newer,
            "transcript": selectors.transcript(participant_id=participant.pk),
        },
        status=status,
    )
