"""The door: the recruiting link, re-entry from another browser, and the resume-code page."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods

from studies import selectors, sessions
from studies.models import Participant, Study
from studies.pages import closed_page, step_url, study_or_404
from studies.recruiting import MTURK_PREVIEW, BadRecruitingParam, recruiting_from_query
from studies.services import access, reentry
from studies.services import participants as svc
from studies.services.errors import StudyActionError

MAX_CODE_CHARS = 32


@require_GET
def entry(request: HttpRequest, slug: str) -> HttpResponse:
    study = study_or_404(slug)
    if request.GET.get("assignmentId") == MTURK_PREVIEW:
        return render(request, "studies/preview.html", {"study": study})
    try:
        link = recruiting_from_query(request.GET, study.stratify_by)
    except BadRecruitingParam as exc:
        return closed_page(request, study, exc.message, status=400)
    source, external_id, params = link.source, link.external_id, link.params
    kind = access.access_kind(study, request.GET)
    if kind is None and any(k in request.GET for k in access.KINDS):
        return closed_page(
            request, study, _("This test link is invalid or has expired."), status=403
        )
    if kind is not None:
        source, external_id, params = kind, None, {}
    holder = sessions.session_participant_id(request.session, slug)
    if external_id is None and holder is not None:
        return redirect(step_url(selectors.participant_for_page(holder)))
    platform = study.recruiting_source
    if kind is None and platform != Study.Source.LINK and source != platform:
        # A platform study admits only that platform's ids: a bare ?pid= would bypass it.
        return closed_page(
            request, study, _("Please open this study from your recruiting platform's link.")
        )
    try:
        entered = svc.participant_enter(
            study=study, external_id=external_id, source=source, params=params, kind=kind
        )
    except StudyActionError as exc:
        return closed_page(request, study, exc.message)
    participant = entered.participant
    if entered.created:
        sessions.session_bind(request, slug, participant.pk)
        sessions.session_remember_code(request.session, slug, entered.resume_code or "")
    elif holder == participant.pk:
        reentry.participant_record_attempt(participant=participant, params=params)
    else:
        return _reenter(request, study, participant, params)
    return redirect(step_url(participant))


def _client(request: HttpRequest) -> str:
    # uvicorn --proxy-headers puts the forwarded client address here (docker/compose.yaml).
    return request.META.get("REMOTE_ADDR") or "unknown"


def _reenter(
    request: HttpRequest, study: Study, participant: Participant, params: dict[str, str]
) -> HttpResponse:
    """A known id in a browser that is not theirs: the link's own platform token (counted, so it
    cannot be guessed) binds it; anything else gets the resume-code page and nothing of theirs."""
    count = reentry.attempt_count(
        bucket="arrival",
        study_id=study.pk,
        external_id=participant.external_id,
        client=_client(request),
    )
    token = reentry.link_token(params)
    if token:
        message, status = _over_limit(participant, count)
        if message is not None:
            return closed_page(request, study, message, status=status)
        how = reentry.entry_token(participant, params)
        if how is not None:
            reentry.participant_rebind(participant_id=participant.pk, how=how, params=params)
            sessions.session_bind(request, study.slug, participant.pk)
            return redirect(step_url(participant))
    sessions.session_hold_reentry(request.session, study.slug, participant.pk, params)
    if count is not None and count <= reentry.ATTEMPT_LIMIT:
        reason = "unknown_token" if token else "no_token"
        reentry.participant_resume_refused(participant_id=participant.pk, reason=reason)
    return redirect("studies:resume", study.slug)


def _over_limit(participant: Participant, count: int | None) -> tuple[str | None, int]:
    """(message, status) when this attempt may not be checked; (None, 200) when it may."""
    if count is None:
        return _("Your return cannot be checked right now. Please try again in a minute."), 503
    if count > reentry.ATTEMPT_LIMIT:
        if count == reentry.ATTEMPT_LIMIT + 1:
            reentry.participant_resume_refused(participant_id=participant.pk, reason="limited")
        minutes = reentry.ATTEMPT_WINDOW_SECONDS // 60
        message = _("Too many attempts. Please wait %(minutes)s minutes and try again.")
        return message % {"minutes": minutes}, 429
    return None, 200


@require_http_methods(["GET", "POST"])
def resume(request: HttpRequest, slug: str) -> HttpResponse:
    """The neutral 'resume your session' page: a code binds this browser to the held id."""
    study = study_or_404(slug)
    held = sessions.session_reentry(request.session, slug)
    participant = (
        Participant.objects.select_related("study").filter(pk=held[0], study=study).first()
        if held is not None
        else None
    )
    if held is None or participant is None:
        holder = sessions.session_participant_id(request.session, slug)
        if holder is not None:
            return redirect(step_url(selectors.participant_for_page(holder)))
        return closed_page(request, study, _("Please open this study from your link."))
    error, status = None, 200
    if request.method == "POST":
        outcome = _try_code(request, participant, held[1])
        if isinstance(outcome, HttpResponse):
            return outcome
        error, status = outcome
    return render(request, "studies/resume.html", {"study": study, "error": error}, status=status)


def _try_code(
    request: HttpRequest, participant: Participant, params: dict[str, str]
) -> HttpResponse | tuple[str, int]:
    """Bind this browser if the code is theirs and the limit allows; else (message, status)."""
    slug = participant.study.slug
    count = reentry.attempt_count(
        bucket="code",
        study_id=participant.study_id,
        external_id=participant.external_id,
        client=_client(request),
    )
    message, status = _over_limit(participant, count)
    if message is not None:
        return message, status
    code = request.POST.get("code", "")[:MAX_CODE_CHARS]
    if not reentry.resume_code_matches(participant, code):
        reentry.participant_resume_refused(participant_id=participant.pk, reason="wrong_code")
        return _("That resume code is not right. Please check it and try again."), 400
    reentry.participant_rebind(participant_id=participant.pk, how="resume_code", params=params)
    sessions.session_bind(request, slug, participant.pk)
    sessions.session_remember_code(request.session, slug, reentry.resume_code_display(code))
    return redirect(step_url(participant))
