"""The participant's session is their only credential: ids never travel in URLs or forms."""

from collections.abc import Iterable

from studies.models import Participant

P = Participant.Status
CHAT_STATUSES = frozenset({P.CHATTING, P.RATING_DUE})


def _key(slug: str) -> str:
    return f"participant:{slug}"


def session_participant_id(
    session, slug: str, *, statuses: Iterable[str] | None = None
) -> int | None:
    """The participant this session holds for the study, optionally only in the given statuses."""
    pid = session.get(_key(slug))
    if not isinstance(pid, int):
        return None
    rows = Participant.objects.filter(pk=pid, study__slug=slug)
    if statuses is not None:
        rows = rows.filter(status__in=list(statuses))
    return pid if rows.exists() else None


def session_bind(request, slug: str, participant_id: int) -> None:
    """Bind the session to a participant, rotating the session key when the holder changes."""
    if request.session.get(_key(slug)) != participant_id:
        request.session.cycle_key()
        request.session[_key(slug)] = participant_id
