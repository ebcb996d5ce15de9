"""The end: where a participant with a code is sent back to their recruiting platform."""

from studies.models import Participant, Study
from studies.services import outcomes

PROLIFIC_COMPLETION_URL = "https://app.prolific.com/submissions/complete?cc={code}"


def completion_redirect(participant: Participant) -> str | None:
    """The recruiting platform's completion URL for this participant's outcome, if there is one.

    Prolific studies get Prolific's own completion address unless the study sets another; the
    code is the one for the participant's outcome (completed, screened out, failed attention
    checks, timed out, declined consent: Prolific takes no-consent returns by code too).
    Preview and pilot participants are never sent to a platform.
    """
    code = outcomes.outcome_code(participant)
    if code is None or participant.is_preview or participant.is_pilot:
        return None
    study = participant.study
    url = study.completion_redirect_url
    if not url and participant.recruiting_source == Study.Source.PROLIFIC:
        url = PROLIFIC_COMPLETION_URL
    return url.replace("{code}", code) if url else None
