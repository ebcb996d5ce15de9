"""Step 4: the chat page (the turns go over the websocket, studies.consumers), leaving it, and
the heartbeat every participant page sends."""

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from studies.models import Participant
from studies.pages import at_step, moved_on
from studies.services import activity, documents, outcomes
from studies.services import participants as svc
from studies.services.errors import StudyActionError
from studies.services.versions import frozen_study
from studies.sessions import session_participant_id


def _chat_context(participant: Participant) -> dict:
    latest = documents.document_latest(participant)
    return {
        "document": latest,
        "document_text": latest.text if latest else "",
        "participant": participant,
        "study": frozen_study(participant),
        "scale": range(1, 11),
        "heartbeat_seconds": settings.HEARTBEAT_SECONDS,
        "max_chars": settings.CHAT_MAX_MESSAGE_CHARS,
    }


@require_GET
def chat(request: HttpRequest, slug: str) -> HttpResponse:
    participant = at_step(request, slug, "chat")
    if isinstance(participant, HttpResponse):
        return participant
    return render(request, "studies/chat.html", _chat_context(participant))


@require_POST
def finish(request: HttpRequest, slug: str) -> HttpResponse:
    participant = at_step(request, slug, "chat")
    if isinstance(participant, HttpResponse):
        return participant
    try:
        svc.participant_finish_chat(participant_id=participant.pk)
    except StudyActionError as exc:
        if exc.code == "wrong_step":
            return moved_on(participant.pk)
        context = _chat_context(participant) | {"error": exc.message}
        return render(request, "studies/chat.html", context, status=400)
    return redirect("studies:final", slug)


@require_POST
def alive(request: HttpRequest, slug: str) -> HttpResponse:
    """A participant page's heartbeat: keeps a participant who is reading or writing from being
    marked abandoned or timed out. Nothing to return; 204 also when the session has no one."""
    pid = session_participant_id(request.session, slug, statuses=outcomes.IN_PROGRESS)
    if pid is not None:
        signal = "idle" if request.POST.get("signal") == "idle" else "active"
        activity.activity_record(participant_id=pid, signal=signal, payload={"page": True})
    return HttpResponse(status=204)
