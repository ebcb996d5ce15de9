"""What every participant page view needs: the study by its slug, the participant's current step
(and the redirect to it when a request is for another one), and the page that says why they
cannot go on."""

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from studies import selectors
from studies.models import Participant, Study
from studies.services import participants as svc
from studies.sessions import session_participant_id


def study_or_404(slug: str) -> Study:
    """The study with this slug, or a 404."""
    study = selectors.study_by_slug(slug)
    if study is None:
        raise Http404("No such study.")
    return study


def step_url(participant: Participant) -> str:
    """The URL of the step the participant is at now."""
    return reverse(f"studies:{svc.participant_step(participant)}", args=[participant.study.slug])


def closed_page(
    request: HttpRequest, study: Study, message: str, status: int = 200
) -> HttpResponse:
    """The neutral page that tells a visitor why they cannot go on."""
    return render(
        request, "studies/closed.html", {"study": study, "message": message}, status=status
    )


def at_step(request: HttpRequest, slug: str, step: str) -> Participant | HttpResponse:
    """The session's participant if this is their step now, else a redirect to where they are."""
    pid = session_participant_id(request.session, slug)
    if pid is None:
        return redirect("studies:entry", slug)
    participant = selectors.participant_for_page(pid)
    if svc.participant_step(participant) != step:
        return redirect(step_url(participant))
    return participant


def moved_on(participant_id: int) -> HttpResponse:
    """A double click or a stale tab: the step was already taken, so go where they are now."""
    return redirect(step_url(selectors.participant_for_page(participant_id)))
