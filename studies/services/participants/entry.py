"""Step 0, the door: a recruiting link creates the participant (or finds them again)."""

import uuid
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from studies.models import Participant, Study
from studies.services import reentry
from studies.services.errors import StudyActionError
from studies.services.events import event_record
from studies.services.versions import version_latest


@dataclass(frozen=True)
class Entry:
    participant: Participant
    created: bool
    # The plain resume code of a participant just created (only its hash is stored).
    resume_code: str | None = None


def participant_enter(
    *,
    study: Study,
    external_id: str | None,
    source: str,
    params: dict[str, str],
    kind: str | None = None,
) -> Entry:
    """Return the participant for this external id, creating them on first entry.

    `kind` is "preview" or "pilot" for a researcher's signed link (allowed before the study is
    live); such participants never share the real allocation sequences. An existing participant
    comes back with created=False and nothing changed: whether this browser may continue as them
    is the caller's question (studies.services.reentry), and so is recording their new attempt.
    """
    now = timezone.now()
    if external_id:
        existing = Participant.objects.filter(study=study, external_id=external_id).first()
        if existing is not None:
            return Entry(existing, created=False)
    if study.status == Study.Status.CLOSED or (kind is None and study.status != Study.Status.LIVE):
        raise StudyActionError("not_live", _("This study is not accepting participants right now."))
    if external_id and kind is None and _took_part_in_linked(study, external_id):
        raise StudyActionError(
            "repeat",
            _(
                "Our records show you have already taken part in a related study, so you cannot "
                "take part in this one. Please return the task; thank you for your interest."
            ),
        )
    ext = external_id or f"{kind or 'anon'}-{uuid.uuid4().hex}"
    version = version_latest(study)
    code = reentry.resume_code_new()
    try:
        with transaction.atomic():
            participant = Participant(
                study=study,
                external_id=ext,
                recruiting_source=source,
                recruiting_params=params,
                config_version=version.number,
                version=version,
                attempts=[reentry.attempt_new(params, now)],
                is_pilot=kind == "pilot",
                is_preview=kind == "preview",
                last_active_at=now,
            )
            participant.resume_code_hash = reentry.resume_code_hash(participant, code)
            participant.save(force_insert=True)
            event_record(
                study_id=study.pk,
                participant_id=participant.pk,
                kind="study.participant.entered",
                payload={"source": source, "version": version.number, "access": kind or "public"},
            )
    except IntegrityError:
        # Two tabs arrived with the same id at once: the other request created the row. This one
        # is a re-entry like any other; the caller binds it only if it proves it is them.
        return Entry(Participant.objects.get(study=study, external_id=ext), created=False)
    return Entry(participant, created=True, resume_code=code)


def _took_part_in_linked(study: Study, external_id: str) -> bool:
    return Participant.objects.filter(
        study__in=study.linked_studies.all(), external_id=external_id, is_preview=False
    ).exists()
