"""The end: the completion code page, and the page of a participant whose study ended early."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_GET

from studies import selectors
from studies.models import Participant
from studies.pages import at_step, closed_page, study_or_404
from studies.services import outcomes
from studies.services import participants as svc
from studies.services.versions import frozen_study
from studies.sessions import session_participant_id


@require_GET
def done(request: HttpRequest, slug: str) -> HttpResponse:
    participant = at_step(request, slug, "done")
    if isinstance(participant, HttpResponse):
        return participant
    context = {
        "participant": participant,
        "study": frozen_study(participant),
        "code": outcomes.outcome_code(participant),
        "redirect_url": svc.completion_redirect(participant),
    }
    return render(request, "studies/done.html", context)


ENDED_MESSAGES = {
    Participant.Outcome.DECLINED: _("You did not consent; you may close this page."),
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
