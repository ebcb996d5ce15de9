"""`manage.py erase_participant STUDY ID --requested-by NAME --reason TEXT` (data subjects)."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.services.erasure import ErasureError, participant_erase, participant_find


class Command(BaseCommand):
    help = (
        "Erase one participant and all their rows (messages, ratings, survey, intent answers, "
        "events) in one transaction, and record who asked, when and why. Exports and reports "
        "already written under REPORTS_DIR are not touched."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("study", help="The study's slug.")
        parser.add_argument("participant", help="Recruiting id as stored, or the participant id.")
        parser.add_argument("--requested-by", required=True, help="Who made the request.")
        parser.add_argument("--reason", required=True, help="Why (e.g. the request's reference).")

    def handle(self, *args: Any, study: str, participant: str, **options: Any) -> None:
        try:
            found = participant_find(study_slug=study, ident=participant)
            record = participant_erase(
                participant_id=found.pk,
                requested_by=options["requested_by"],
                reason=options["reason"],
            )
        except ErasureError as exc:
            raise CommandError(str(exc)) from exc
        rows = ", ".join(f"{n} {label}" for label, n in sorted(record.erased_rows.items()))
        self.stdout.write(f"Erased {study}/{record.participant_pseudonym}: {rows}.")
        self.stdout.write(
            f"Recorded as erasure {record.pk}. Exports made before now still hold this participant."
        )
