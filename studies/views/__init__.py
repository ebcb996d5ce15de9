"""Participant pages, one module per step, in the order a participant meets them: entry (the
recruiting link and the resume page), consent, brief, check, chat, final, done. Each view parses,
calls one service (studies.services.participants has the same steps) and renders."""

from studies.views.brief import brief
from studies.views.chat import alive, chat, finish
from studies.views.check import check
from studies.views.consent import consent
from studies.views.document import document, document_preview
from studies.views.done import closed, done
from studies.views.entry import entry, resume
from studies.views.final import final

__all__ = [
    "alive",
    "brief",
    "chat",
    "check",
    "closed",
    "consent",
    "document",
    "document_preview",
    "done",
    "entry",
    "final",
    "finish",
    "resume",
]
