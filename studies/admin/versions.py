"""Frozen study configurations, each with what changed since the one before."""

from django.contrib import admin
from django.db.models import Count
from django.utils.html import format_html, format_html_join

from studies.admin.common import (
    ReadOnlyAdmin,
)
from studies.models import (
    StudyVersion,
)
from studies.services import (
    versions,
)


@admin.register(StudyVersion)
class StudyVersionAdmin(ReadOnlyAdmin):
    """Frozen configurations; each shows what changed since the one before it."""

    list_display = ["study", "number", "created_at", "created_by", "n_participants"]
    list_filter = ["study"]
    fields = ["study", "number", "created_at", "created_by", "changes", "config"]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_n=Count("participant"))

    @admin.display(description="participants", ordering="_n")
    def n_participants(self, obj: StudyVersion) -> int:
        return obj._n

    @admin.display(description="changes since the previous version")
    def changes(self, obj: StudyVersion) -> str:
        previous = obj.study.versions.filter(number__lt=obj.number).order_by("-number").first()
        rows = versions.version_diff(previous, obj)
        if not rows:
            return "-"
        body = format_html_join(
            "",
            "<tr><th scope='row'><code>{}</code></th><td>{}</td><td>{}</td></tr>",
            ((path, "—" if old is None else old, "—" if new is None else new)
             for path, old, new in rows),
        )  # fmt: skip
        return format_html(
            "<table><caption>v{} → v{}</caption><thead><tr><th scope='col'>setting</th>"
            "<th scope='col'>before</th><th scope='col'>after</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            previous.number if previous else 0,
            obj.number,
            body,
        )
