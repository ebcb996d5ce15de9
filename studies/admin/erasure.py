"""Erasure records: who erased a participant, when and why."""

from django.contrib import admin

from studies.admin.common import (
    ReadOnlyAdmin,
)
from studies.models import (
    ErasureRecord,
)


@admin.register(ErasureRecord)
class ErasureRecordAdmin(ReadOnlyAdmin):
    """Erasures made by `manage.py erase_participant`: read-only."""

    list_display = ["created_at", "study_slug", "participant_pseudonym", "requested_by", "reason"]
    list_filter = ["study_slug"]
    fields = ["created_at", *list_display[1:], "erased_rows"]
    readonly_fields = fields
