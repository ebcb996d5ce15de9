"""The localStorage key under which the chat keeps a participant's unsent draft."""

from django import template
from django.utils.crypto import salted_hmac

from studies.models import Participant

register = template.Library()


@register.filter
def draft_key(participant: Participant) -> str:
    """An opaque key per participant: a keyed hash, so no id appears in the browser's storage."""
    digest = salted_hmac("studies.chat-draft", str(participant.public_id)).hexdigest()
    return "draft:" + digest[:32]
