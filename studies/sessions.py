"""The participant's session is their credential on every page: ids never travel in URLs or forms.

A browser that is not yet theirs gets in only through studies.services.reentry.
"""

from collections.abc import Iterable

from studies.models import Participant

P = Participant.Status
CHAT_STATUSES = frozenset({P.CHATTING, P.RATING_DUE})


def _key(slug: str) -> str:
    return f"participant:{slug}"


def _code_key(slug: str) -> str:
    return f"resume_code:{slug}"


def _reentry_key(slug: str) -> str:
    return f"reentry:{slug}"


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
        # Another participant's resume code must never show on this one's pages.
        request.session.pop(_code_key(slug), None)
    session_drop_reentry(request.session, slug)


def session_remember_code(session, slug: str, code: str) -> None:
    """Keep the participant's resume code in their own session so their pages can show it."""
    session[_code_key(slug)] = code


def session_resume_code(session, slug: str) -> str:
    """The resume code this session was shown or entered for the study ('' when none)."""
    code = session.get(_code_key(slug), "")
    return code if isinstance(code, str) else ""


def session_hold_reentry(session, slug: str, participant_id: int, params: dict[str, str]) -> None:
    """Remember, server-side, whom this session asks to continue as until it proves it."""
    session[_reentry_key(slug)] = {"participant": participant_id, "params": params}


def session_reentry(session, slug: str) -> tuple[int, dict[str, str]] | None:
    """The (participant id, link params) this session asked to continue as, if any."""
    held = session.get(_reentry_key(slug))
    if not isinstance(held, dict) or not isinstance(held.get("participant"), int):
        return None
    return held["participant"], dict(held.get("params") or {})


def session_drop_reentry(session, slug: str) -> None:
    """Forget whom this session asked to continue as."""
    session.pop(_reentry_key(slug), None)
