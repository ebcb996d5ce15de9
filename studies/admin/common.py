"""What the admin modules share: the permission names and the read-only base admin."""

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

# Permission names (Study.Meta.permissions); the researcher groups are made in migration 0006.
RUN_STUDY = "studies.run_study"


VIEW_TRANSCRIPTS = "studies.view_transcripts"


TRANSCRIPT_FIELDS = ("intent", "transcript", "final")


# The link's platform tokens live here, and a token rebinds a browser to the participant
# (studies.services.reentry): shown only to roles that may read what participants wrote.
CREDENTIAL_FIELDS = ("recruiting_params", "attempts")


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records nobody edits in the admin: viewable with view permission, never added or deleted."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


def render_admin_page(
    request: HttpRequest,
    template: str,
    context: dict[str, Any],
    *,
    partial: str,
    model_admin: admin.ModelAdmin,
    title: str,
    page_context: Callable[[], dict[str, Any]] | None = None,
) -> HttpResponse:
    """An admin page, or only its `partial` (named after the DOM id it replaces) for htmx.

    A poll re-renders the partial from `context`; the whole page adds the admin chrome and
    whatever `page_context` gives (computed only for the whole page).
    """
    if request.htmx:
        return render(request, f"{template}#{partial}", context)
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": title,
        **context,
        **(page_context() if page_context else {}),
    }
    return render(request, template, context)
