"""The working document's autosave and preview (the pane beside the chat and the final page).

JSON in answer to fetch() and sendBeacon(): the session's own participant only, CSRF required.
"""

from django.http import HttpRequest, JsonResponse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from studies.services import documents
from studies.services.errors import StudyActionError
from studies.sessions import session_participant_id

STATUS_BY_CODE = {"too_long": 413, "too_many": 429}


def _number(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _refused(message: str, status: int) -> JsonResponse:
    return JsonResponse({"message": message}, status=status)


@require_POST
def document(request: HttpRequest, slug: str) -> JsonResponse:
    """Save the document: 200 {version}, 409 {version, text} when a newer version exists."""
    pid = session_participant_id(request.session, slug)
    if pid is None:
        return _refused(_("Your session has ended; please open the study from your link."), 403)
    base = _number(request.POST.get("base_version"))
    if base is None or base < 0:
        return _refused(_("The document could not be saved: the request was incomplete."), 400)
    try:
        version = documents.document_save(
            participant_id=pid,
            text=request.POST.get("text", ""),
            base_version=base,
            source=request.POST.get("source", ""),
            from_message_id=_number(request.POST.get("from_message_id")),
        )
    except documents.DocumentStale as exc:
        body = {"version": exc.latest_number, "text": exc.latest_text, "message": exc.message}
        return JsonResponse(body, status=409)
    except StudyActionError as exc:
        return _refused(exc.message, STATUS_BY_CODE.get(exc.code, 400))
    return JsonResponse({"version": version.number if version else 0})


@require_POST
def document_preview(request: HttpRequest, slug: str) -> JsonResponse:
    """The document rendered as the replies are (Markdown, sanitised), for the Preview tab."""
    pid = session_participant_id(request.session, slug)
    if pid is None:
        return _refused(_("Your session has ended; please open the study from your link."), 403)
    try:
        html = documents.document_preview(participant_id=pid, text=request.POST.get("text", ""))
    except StudyActionError as exc:
        return _refused(exc.message, STATUS_BY_CODE.get(exc.code, 400))
    return JsonResponse({"html": html})
