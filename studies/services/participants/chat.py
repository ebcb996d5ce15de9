"""Step 4, leaving the chat (the turns themselves are studies.services.turns)."""

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from studies.models import Message, Participant
from studies.services.activity import activity_apply
from studies.services.errors import StudyActionError
from studies.services.events import event_record
from studies.services.participants.steps import P, locked
from studies.services.turns import time_is_up
from studies.services.versions import frozen_study


def completed_turns(participant_id: int) -> int:
    """Turns whose assistant reply completed (a continuation of a cut reply is not a turn)."""
    return Message.objects.filter(
        participant_id=participant_id,
        role=Message.Role.ASSISTANT,
        status=Message.Status.COMPLETE,
        continuation_of__isnull=True,
    ).count()


def participant_finish_chat(*, participant_id: int) -> Participant:
    """Leave the chat for the final survey; only after the minimum number of turns."""
    with transaction.atomic():
        participant = locked(participant_id, expected={P.CHATTING})
        done = completed_turns(participant.pk)
        time_up = time_is_up(participant)
        min_turns = frozen_study(participant).min_turns
        if done < min_turns and not time_up:
            raise StudyActionError(
                "too_few_turns",
                _("Please complete at least %(min_turns)s turns (you have %(done)s).")
                % {"min_turns": min_turns, "done": done},
            )
        if participant.messages.filter(status=Message.Status.STREAMING).exists():
            raise StudyActionError("busy", _("Please wait for the assistant's reply to finish."))
        participant.status = P.FINAL
        participant.chat_finished_at = timezone.now()
        fields = activity_apply(participant, signal="page", now=participant.chat_finished_at)
        participant.save(update_fields=["status", "chat_finished_at", *fields])
        event_record(
            study_id=participant.study_id,
            participant_id=participant.pk,
            kind="study.chat.finished",
            payload={"turns": done, "time_up": time_up},
        )
    return participant
