"""Step 1, consent: record it and assign the arm and document type, or record the decline."""

from django.db import transaction
from django.utils import timezone

from studies.models import Participant
from studies.services import assignment
from studies.services.activity import activity_apply
from studies.services.events import event_record
from studies.services.participants.steps import P, locked
from studies.services.versions import frozen_study, version_latest


def participant_consent(
    *, participant_id: int, training: bool = False, sharing: bool = False
) -> Participant:
    """Record consent and assign the arm and the document type (permuted blocks, locked).

    `training` and `sharing` are the optional extras (use for training, public sharing): recorded
    only where the study version consented to asks for them, else left None (not asked).

    A study's arrivals queue on its counter rows, so everything is read and computed before
    `assign_participant` takes them: after it, only the participant's UPDATE and the event's
    INSERT run before COMMIT (tests/studies/test_consent_locking.py pins this).
    """
    now = timezone.now()
    with transaction.atomic():
        participant = locked(participant_id, expected={P.ENTERED})
        study = participant.study
        # The version in force at consent (arms included) is the one the participant keeps.
        entered_version = participant.config_version
        participant.version = version_latest(study)
        participant.config_version = participant.version.number
        asked = frozen_study(participant)
        participant.consent_training = bool(training) if asked.asks_training_consent else None
        participant.consent_sharing = bool(sharing) if asked.asks_sharing_consent else None
        plan = assignment.assignment_plan(participant)
        fields = ["condition", "document_type", "allocation", "status", "consented_at"]
        fields += ["version", "config_version", "consent_training", "consent_sharing"]
        fields += activity_apply(participant, signal="page", now=now)
        assigned = assignment.assign_participant(participant, plan)
        participant.condition = plan.conditions[assigned.condition_key]
        participant.document_type = assigned.document_type
        participant.allocation = assigned.record
        participant.status = P.CONSENTED
        participant.consented_at = now
        participant.save(update_fields=fields)
        event_record(
            study_id=study.pk,
            participant_id=participant.pk,
            kind="study.participant.consented",
            payload={
                "allocation": participant.allocation,
                "version": participant.config_version,
                "entered_version": entered_version,
                "extras": {
                    "training": participant.consent_training,
                    "sharing": participant.consent_sharing,
                },
            },
        )
    return participant


def participant_decline(*, participant_id: int) -> Participant:
    """Record that the participant did not consent: an ending with its own code, no assignment."""
    now = timezone.now()
    with transaction.atomic():
        participant = locked(participant_id, expected={P.ENTERED})
        participant.status = P.DECLINED
        participant.outcome = Participant.Outcome.DECLINED
        participant.ended_at = now
        fields = ["status", "outcome", "ended_at"]
        fields += activity_apply(participant, signal="page", now=now)
        participant.save(update_fields=fields)
        event_record(
            study_id=participant.study_id,
            participant_id=participant.pk,
            kind="study.participant.declined",
            payload={"version": participant.config_version},
        )
    return participant
