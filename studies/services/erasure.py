"""Erasing one participant on a data-subject request: the only way participant rows are deleted."""

from collections.abc import Iterable

from django.db import transaction
from django.db.models import ForeignObjectRel

from studies.models import ErasureRecord, Participant, Study
from studies.services.events import event_record
from studies.services.exports import pseudonym


class ErasureError(ValueError):
    """The request names no participant, or lacks who asked or why."""


def participant_find(*, study_slug: str, ident: str) -> Participant:
    """The study's participant by recruiting id (stored or as the platform gave it), else by pk."""
    study = Study.objects.filter(slug=study_slug).first()
    if study is None:
        raise ErasureError(f"no study with slug {study_slug!r}")
    # Ids are stored as "<source>:<id>"; a request usually quotes the platform's id alone.
    forms = [ident, *(f"{source}:{ident}" for source in Study.Source.values)]
    matches = list(Participant.objects.filter(study=study, external_id__in=forms)[:2])
    if len(matches) > 1:
        raise ErasureError(f"{study_slug}: {ident!r} matches more than one; give the stored id")
    if not matches and ident.isdigit():
        matches = list(Participant.objects.filter(study=study, pk=int(ident)))
    if not matches:
        raise ErasureError(f"{study_slug}: no participant with recruiting id or id {ident!r}")
    return matches[0]


def _dependents_first(relations: Iterable[ForeignObjectRel]) -> list[ForeignObjectRel]:
    """Participant's child tables, those that point at another child table (a document version
    at the message it inserted) before the one they point at."""
    children = {r.related_model for r in relations}

    def points_at_a_child(relation: ForeignObjectRel) -> bool:
        return any(
            f.is_relation
            and f.related_model in children
            # not the participant, and not itself (a continuation points at the reply it continues)
            and f.related_model not in (Participant, relation.related_model)
            for f in relation.related_model._meta.get_fields()
            if f.concrete
        )

    return sorted(relations, key=lambda r: not points_at_a_child(r))


@transaction.atomic
def participant_erase(*, participant_id: int, requested_by: str, reason: str) -> ErasureRecord:
    """Delete the participant and every row about them; record who, when and why."""
    requested_by, reason = requested_by.strip(), reason.strip()
    if not requested_by or not reason:
        raise ErasureError("an erasure needs who requested it and why")
    participant = (
        Participant.objects.select_for_update().select_related("study").get(pk=participant_id)
    )
    erased: dict[str, int] = {}
    # Children first: every relation to Participant is PROTECT, so the order is what lets the
    # participant row go; walking _meta also covers tables added later.
    for relation in _dependents_first(Participant._meta.related_objects):
        rows = relation.related_model._default_manager.filter(**{relation.field.name: participant})
        count, _ = rows.delete()
        if count:
            erased[relation.related_model._meta.label] = count
    participant.delete()
    erased["studies.Participant"] = 1
    record = ErasureRecord.objects.create(
        study_slug=participant.study.slug,
        participant_pseudonym=pseudonym(participant.external_id),
        requested_by=requested_by,
        reason=reason,
        erased_rows=erased,
    )
    event_record(
        study_id=participant.study_id,
        kind="study.participant.erased",
        payload={"pseudonym": record.participant_pseudonym, "by": requested_by, "reason": reason,
                 "erasure": record.pk},
    )  # fmt: skip
    return record
