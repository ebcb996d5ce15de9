"""The participant lifecycle, one module per step: entry, consent (with assignment), brief,
comprehension check, leaving the chat, final survey, completion.

Every step function locks the participant row (`steps.locked`), checks the step it belongs to,
changes it and writes an Event in one transaction. A replayed or out-of-order request raises
StudyActionError and changes nothing. The names below are the package's interface; views and
other services import them from here.
"""

from studies.services.participants.brief import (
    participant_choose_topic,
    participant_submit_intent,
    participant_take_only_topic,
)
from studies.services.participants.chat import completed_turns, participant_finish_chat
from studies.services.participants.check import (
    COMPREHENSION_ATTEMPTS,
    CheckResult,
    answers_wrong,
    participant_check_comprehension,
)
from studies.services.participants.completion import completion_redirect
from studies.services.participants.consent import participant_consent, participant_decline
from studies.services.participants.entry import Entry, participant_enter
from studies.services.participants.final import FinalAnswers, participant_submit_final
from studies.services.participants.steps import (
    MAX_ANSWER_CHARS,
    MAX_DOCUMENT_CHARS,
    STEP_BY_STATUS,
    participant_step,
)

__all__ = [
    "COMPREHENSION_ATTEMPTS",
    "MAX_ANSWER_CHARS",
    "MAX_DOCUMENT_CHARS",
    "STEP_BY_STATUS",
    "CheckResult",
    "Entry",
    "FinalAnswers",
    "answers_wrong",
    "completed_turns",
    "completion_redirect",
    "participant_check_comprehension",
    "participant_choose_topic",
    "participant_consent",
    "participant_decline",
    "participant_enter",
    "participant_finish_chat",
    "participant_step",
    "participant_submit_final",
    "participant_submit_intent",
    "participant_take_only_topic",
]
