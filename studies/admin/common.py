"""What the admin modules share: the permission names and the read-only base admin."""

from django.contrib import admin

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
