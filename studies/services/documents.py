"""The participant's working document: one DocumentVersion row per save, from the pane beside the
chat and from the final page.

A save names the version it was edited from (`base_version`); a save from an older version (a
second tab, a reload of an old page) is refused with the newer text, and the refused text is kept
in an Event so that nothing the participant wrote is lost. Saves are counted per participant in
Redis; when Redis is away saves are allowed (it is the participant's own data, and each save is
bounded by MAX_DOCUMENT_CHARS), so an outage never loses their writing.
"""

import logging

from django.db import transaction
from django.utils.translation import gettext as _
from redis.exceptions import RedisError

from studies.models import DocumentVersion, Message, Participant
from studies.services.errors import StudyActionError
from studies.services.events import event_record
from studies.services.participants.chat import completed_turns
from studies.services.participants.steps import MAX_DOCUMENT_CHARS, P, locked, participant_step
from studies.services.redis import redis_client
from studies.services.rendering import render_markdown
from studies.services.text import normalise_newlines

log = logging.getLogger(__name__)

S = DocumentVersion.Source
# The pane saves about a second after typing stops, on blur, on paste and on insert: a real
# writer stays far below this; a runaway script is stopped by it.
SAVES_PER_WINDOW = 120
WINDOW_SECONDS = 60
KEY_PREFIX = "collabllm:document"
REDIS_TIMEOUT = 0.5
PANE_SOURCES = frozenset({S.TYPED, S.INSERTED, S.PASTED})
CHAT_STATUSES = frozenset({P.CHATTING, P.RATING_DUE})


class DocumentStale(StudyActionError):
    """A save based on an older version: carries the latest number and text."""

    def __init__(self, latest_number: int, latest_text: str) -> None:
        super().__init__(
            "stale", _("This document was changed in another tab. Your text was not lost.")
        )
        self.latest_number = latest_number
        self.latest_text = latest_text


def document_latest(participant: Participant) -> DocumentVersion | None:
    """The participant's latest saved version, or None before the first save."""
    return participant.document_versions.order_by("-number").first()


def document_preview(*, participant_id: int, text: str) -> str:
    """The document as sanitised HTML, the same Markdown and sanitiser as replies (not cached).

    Counted like saves (a long text costs a fraction of a second to render): StudyActionError
    past the bound."""
    _count_save(participant_id, "preview")
    return render_markdown.__wrapped__(normalise_newlines(text)[:MAX_DOCUMENT_CHARS])


def _check_size(text: str) -> None:
    if len(text) > MAX_DOCUMENT_CHARS:
        raise StudyActionError(
            "too_long",
            _("The document is limited to %(max_document_chars)s characters.")
            % {"max_document_chars": MAX_DOCUMENT_CHARS},
        )


def _count_save(participant_id: int, what: str = "save") -> None:
    key = (
        f"{KEY_PREFIX}:{participant_id}"
        if what == "save"
        else f"{KEY_PREFIX}:{what}:{participant_id}"
    )
    try:
        pipe = redis_client(REDIS_TIMEOUT).pipeline()
        pipe.set(key, 0, ex=WINDOW_SECONDS, nx=True)
        pipe.incr(key)
        count = int(pipe.execute()[1])
    except RedisError:
        log.warning("document saves could not be counted: Redis is unreachable", exc_info=True)
        return
    if count > SAVES_PER_WINDOW:
        raise StudyActionError(
            "too_many", _("Too many saves at once. Please wait a moment; your text is kept here.")
        )


def _reply_to_insert(participant: Participant, message_id: int | None) -> Message:
    reply = Message.objects.filter(
        pk=message_id,
        participant_id=participant.pk,
        role=Message.Role.ASSISTANT,
        status=Message.Status.COMPLETE,
    ).first()
    if message_id is None or reply is None:
        raise StudyActionError("bad_message", _("That reply cannot be inserted."))
    return reply


def _append(
    participant: Participant, text: str, source: str, message: Message | None, latest_number: int
) -> DocumentVersion:
    return DocumentVersion.objects.create(
        participant=participant,
        number=latest_number + 1,
        text=text,
        turn_index=completed_turns(participant.pk),
        source=source,
        from_message=message,
    )


def _record_refused(
    participant: Participant, text: str, source: str, base_version: int, latest_number: int
) -> None:
    event_record(
        study_id=participant.study_id,
        participant_id=participant.pk,
        kind="study.document.stale_refused",
        payload={
            "base_version": base_version,
            "latest_version": latest_number,
            "source": source,
            "text": text,  # at most MAX_DOCUMENT_CHARS (checked before)
        },
    )


def document_save(
    *,
    participant_id: int,
    text: str,
    base_version: int,
    source: str,
    from_message_id: int | None = None,
) -> DocumentVersion | None:
    """Save the document as a new version on top of `base_version`, or refuse.

    Returns the latest version (the new one, or the unchanged latest when the text is the same;
    None for an empty text before the first save).
    Raises DocumentStale when `base_version` is not the latest (after recording the refused text),
    StudyActionError for a wrong step, a bad source or message, a text too long, too many saves.
    """
    if source not in PANE_SOURCES:
        raise StudyActionError("bad_source", _("That kind of save is not possible."))
    text = normalise_newlines(text)
    _check_size(text)
    _count_save(participant_id)
    with transaction.atomic():
        participant = locked(participant_id)
        if participant.status not in CHAT_STATUSES and participant_step(participant) != "final":
            raise StudyActionError(
                "wrong_step", _("The document cannot be changed now; your text was not saved.")
            )
        message = _reply_to_insert(participant, from_message_id) if source == S.INSERTED else None
        latest = document_latest(participant)
        number = latest.number if latest else 0
        if latest is not None and latest.text == text:
            return latest
        if latest is None and not text:
            return None
        if base_version == number:
            return _append(participant, text, source, message, number)
        _record_refused(participant, text, source, base_version, number)
        stale = DocumentStale(number, latest.text if latest else "")
    raise stale  # after the commit: the event keeps the refused text


def document_final_stale(
    *, participant: Participant, text: str, base_version: int | None
) -> DocumentStale | None:
    """For the final submission: the conflict when the page was edited from an older version.

    Records the refused text (as document_save does) and returns the exception to raise after
    the commit; None when the submission may go ahead (no base given, the latest, or same text).
    Runs inside the final survey's transaction with the participant row already locked.
    """
    latest = document_latest(participant)
    number = latest.number if latest else 0
    if base_version is None or base_version == number or (latest and latest.text == text):
        return None
    _record_refused(participant, text, S.FINAL, base_version, number)
    return DocumentStale(number, latest.text if latest else "")


def document_save_final(*, participant: Participant, text: str) -> DocumentVersion | None:
    """Store the submitted document as the last version when it differs from the latest.

    Runs inside the final survey's transaction with the participant row already locked.
    """
    text = normalise_newlines(text)
    latest = document_latest(participant)
    if latest is not None and latest.text == text:
        return None
    return _append(participant, text, S.FINAL, None, latest.number if latest else 0)
