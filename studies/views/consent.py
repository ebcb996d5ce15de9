"""Step 1: the consent page; agreeing assigns the arm, declining ends with the declined code."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_http_methods

from studies.models import Participant
from studies.pages import at_step, closed_page, moved_on
from studies.services import participants as svc
from studies.services.errors import StudyActionError
from studies.services.versions import frozen_study


@require_http_methods(["GET", "POST"])
def consent(request: HttpRequest, slug: str) -> HttpResponse:
    participant = at_step(request, slug, "consent")
    if isinstance(participant, HttpResponse):
        return participant
    if request.method == "POST":
        choice = request.POST.get("choice")
        if choice not in ("agree", "decline"):
            # Declining ends the participation for good: never read it into a missing answer.
            error = _("Please choose one of the two buttons below.")
            return _page(request, participant, error, status=400)
        agreed = choice == "agree"
        try:
            if agreed:
                svc.participant_consent(
                    participant_id=participant.pk,
                    training=request.POST.get("consent_training") == "yes",
                    sharing=request.POST.get("consent_sharing") == "yes",
                )
            else:
                svc.participant_decline(participant_id=participant.pk)
        except StudyActionError as exc:
            if exc.code == "wrong_step":
                return moved_on(participant.pk)
            return closed_page(request, participant.study, exc.message)
        return redirect("studies:brief" if agreed else "studies:closed", slug)
    return _page(request, participant)


def _page(
    request: HttpRequest, participant: Participant, error: str | None = None, status: int = 200
) -> HttpResponse:
    context = {"participant": participant, "study": frozen_study(participant), "error": error}
    return render(request, "studies/consent.html", context, status=status)
